// Package sched decides what the zygote tree does next: which test to fork, which
// scope zygote to create, and when a zygote may turn into its last child in place.
//
// It is pure bookkeeping — no processes, no I/O — so every policy here is unit-tested.
//
// The model mirrors pytest's collection tree. The root zygote (a fork of the collected
// session) has one child per session-level key; each zygote has an ordered list of
// units: tests that run in a process forked from it, and child zygotes for narrower
// scopes (package, module, class) or other parameter values of a higher-scoped fixture.
// Units run longest-first (by durations of earlier runs; collection order when unknown).
//
// The last unit of every zygote but the root runs in place: the zygote process itself
// runs its last test (or becomes its last child zygote) once every other unit is done.
// That is what makes teardown match pytest: the scope's fixtures are torn down by the
// same process, right after the last test, and a teardown error lands on that test.
package sched

import "sort"

// Test is one selected test as the scheduler sees it.
type Test struct {
	// Chain holds the keys of the zygotes the test needs, outermost first; the root is
	// implicit. Tests that share a prefix share those zygotes.
	Chain []string
	// Duration is the estimate from earlier runs in seconds; 0 when unknown.
	Duration float64
}

// Kind of an Action.
type Kind int

// Action kinds.
const (
	RunTest Kind = iota // zygote Zygote forks (or, InPlace, runs) test Test
	Spawn               // zygote Zygote forks (or, InPlace, becomes) zygote Child
)

// Action is one command for one zygote.
type Action struct {
	Kind    Kind
	Zygote  int    // the zygote that acts
	Test    int    // RunTest: index of the test
	Child   int    // Spawn: id of the new zygote
	Key     string // Spawn: its key
	Tests   []int  // Spawn: every test the new zygote will run (for fixture setup)
	InPlace bool
}

type state int

const (
	unborn   state = iota
	spawning       // told to spawn, not ready yet
	ready
	handedOver // became its last child in place; the child carries on in this process
	exited
)

type unit struct {
	test   int // -1 for a zygote unit
	child  *Zygote
	weight float64
	first  int // collection position of its first test: tie-breaker
	done   bool
}

// Zygote is one node of the zygote tree.
type Zygote struct {
	ID     int
	Key    string
	Parent *Zygote
	units  []*unit
	next   int // units before next have been started
	active int // started units not yet done
	state  state
	serial bool
	tests  []int // every test under this zygote, collection order
}

// Scheduler tracks the tree and the concurrency limit.
type Scheduler struct {
	limit    int
	busy     int // running tests + zygotes setting up
	zygotes  []*Zygote
	testZyg  []*Zygote // test index -> its zygote
	testUnit []*unit
	started  []bool
	left     int // tests neither done nor lost
	stopped  bool
}

// New builds the tree for tests (indexed as given) with at most limit tests running
// (and zygotes setting up) at once.
func New(tests []Test, limit int) *Scheduler {
	if limit < 1 {
		limit = 1
	}
	s := &Scheduler{limit: limit, left: len(tests),
		testZyg: make([]*Zygote, len(tests)), testUnit: make([]*unit, len(tests)), started: make([]bool, len(tests))}
	root := &Zygote{ID: 0, Key: "", state: unborn}
	s.zygotes = append(s.zygotes, root)
	byKey := map[*Zygote]map[string]*Zygote{}
	for i, t := range tests {
		z := root
		z.tests = append(z.tests, i)
		for _, key := range t.Chain {
			kids := byKey[z]
			if kids == nil {
				kids = map[string]*Zygote{}
				byKey[z] = kids
			}
			c, ok := kids[key]
			if !ok {
				c = &Zygote{ID: len(s.zygotes), Key: key, Parent: z}
				s.zygotes = append(s.zygotes, c)
				kids[key] = c
				z.units = append(z.units, &unit{test: -1, child: c, first: i})
			}
			z = c
			z.tests = append(z.tests, i)
		}
		u := &unit{test: i, weight: t.Duration, first: i}
		z.units = append(z.units, u)
		s.testZyg[i] = z
		s.testUnit[i] = u
	}
	weigh(root)
	return s
}

// weigh orders every zygote's units longest-first and returns the subtree's weight.
func weigh(z *Zygote) float64 {
	total := 0.0
	for _, u := range z.units {
		if u.child != nil {
			u.weight = weigh(u.child)
		}
		total += u.weight
	}
	sort.SliceStable(z.units, func(i, j int) bool {
		if z.units[i].weight != z.units[j].weight {
			return z.units[i].weight > z.units[j].weight
		}
		return z.units[i].first < z.units[j].first
	})
	return total
}

// Zygote returns the zygote with id, or nil.
func (s *Scheduler) Zygote(id int) *Zygote {
	if id < 0 || id >= len(s.zygotes) {
		return nil
	}
	return s.zygotes[id]
}

// TestsUnder returns every test index under zygote id.
func (s *Scheduler) TestsUnder(id int) []int {
	if z := s.Zygote(id); z != nil {
		return z.tests
	}
	return nil
}

// ZygoteOf returns the id of the zygote test i runs under.
func (s *Scheduler) ZygoteOf(i int) int { return s.testZyg[i].ID }

// Left is the number of tests neither finished nor lost.
func (s *Scheduler) Left() int { return s.left }

// Busy is the number of slots in use.
func (s *Scheduler) Busy() int { return s.busy }

// RootReady records that the root zygote is up.
func (s *Scheduler) RootReady() { s.zygotes[0].state = ready }

// Ready records that zygote id has set itself up and accepts commands.
func (s *Scheduler) Ready(id int) {
	z := s.Zygote(id)
	if z == nil || z.state != spawning {
		return
	}
	z.state = ready
	s.busy--
}

// SetSerial makes zygote id run one child at a time from now on.
func (s *Scheduler) SetSerial(id int) {
	if z := s.Zygote(id); z != nil {
		z.serial = true
	}
}

// Stop ends dispatching: Next returns nothing from now on.
func (s *Scheduler) Stop() { s.stopped = true }

// Next returns the actions that can start now, marking them started.
func (s *Scheduler) Next() []Action {
	var out []Action
	for !s.stopped && s.busy < s.limit {
		a, ok := s.find(s.zygotes[0])
		if !ok {
			break
		}
		out = append(out, a)
	}
	return out
}

func (s *Scheduler) find(z *Zygote) (Action, bool) {
	// A zygote that handed over runs nothing itself, but its successor lives under it.
	if z.state != ready && z.state != handedOver {
		return Action{}, false
	}
	// Work inside zygotes already started comes first: it keeps few zygotes alive.
	for _, u := range z.units[:z.next] {
		if u.child != nil && !u.done {
			if a, ok := s.find(u.child); ok {
				return a, true
			}
		}
	}
	if z.state != ready || z.next >= len(z.units) {
		return Action{}, false
	}
	final := z.next == len(z.units)-1 && z.Parent != nil
	if (z.serial || final) && z.active > 0 {
		return Action{}, false
	}
	u := z.units[z.next]
	z.next++
	z.active++
	s.busy++
	if u.child == nil {
		s.started[u.test] = true
		return Action{Kind: RunTest, Zygote: z.ID, Test: u.test, InPlace: final}, true
	}
	c := u.child
	c.state = spawning
	if final {
		z.state = handedOver
	}
	return Action{Kind: Spawn, Zygote: z.ID, Child: c.ID, Key: c.Key, Tests: c.tests, InPlace: final}, true
}

// TestDone records that test i finished (in whatever way).
func (s *Scheduler) TestDone(i int) {
	u := s.testUnit[i]
	if u.done {
		return
	}
	u.done = true
	s.left--
	if s.started[i] {
		s.busy--
		s.testZyg[i].active--
	}
}

// Exited records that the process of zygote id ended (normally or not). A zygote that
// handed over in place ends with its successor, so pass the deepest zygote the process
// had become. It returns the tests that had not finished and now never will: the
// caller reports them as lost.
func (s *Scheduler) Exited(id int) (lost []int) {
	z := s.Zygote(id)
	if z == nil || z.state == exited {
		return nil
	}
	for ; z != nil; z = z.Parent {
		lost = append(lost, s.kill(z)...)
		p := z.Parent
		if p == nil {
			break
		}
		for _, u := range p.units {
			if u.child == z && !u.done {
				u.done = true
				p.active--
			}
		}
		if p.state != handedOver {
			break
		}
	}
	return lost
}

// kill marks z and everything under it exited and returns its unfinished tests.
func (s *Scheduler) kill(z *Zygote) (lost []int) {
	if z.state == spawning {
		s.busy--
	}
	z.state = exited
	for _, u := range z.units {
		if u.done {
			continue
		}
		if u.child != nil {
			lost = append(lost, s.kill(u.child)...)
			u.done = true
			continue
		}
		lost = append(lost, u.test)
		s.TestDone(u.test)
	}
	return lost
}
