// Package sched decides what the zygote tree does next: which scope zygote to fork,
// which batch of tests a runner process takes, and when a unit of work is a zygote's
// last (final) one.
//
// It is pure bookkeeping — no processes, no I/O — so every policy here is unit-tested.
//
// The model mirrors pytest's collection tree. The root zygote (a fork of the collected
// session) has one child per session-level key; each zygote has an ordered list of
// units: batches of tests, run by a runner process forked from it, and child zygotes
// for narrower scopes (package, module, class) or other parameter values of a
// higher-scoped fixture. Units run longest-first (by durations of earlier runs;
// collection order when unknown); a batch's tests run in collection order.
//
// A zygote's last unit is marked Final: the last test it runs tears down the zygote's
// scope (and, if the zygote was itself its parent's final unit, the parent's), right
// after itself, so teardown happens once and a teardown error lands on that test, as in
// a plain pytest run. It starts as soon as it is the last unit queued; only that last
// test's teardown waits, at a gate (GateOpen), until every other unit of the zygotes it
// tears down is done. Waiting to start instead serialized a whole module at the tail.
//
// Runners are either one-shot (a fresh process per batch: --tach-isolate test and
// module) or persistent (--tach-isolate none: a runner takes batch after batch from
// its zygote until none is left). A runner that dies mid-batch has the tests it did not
// start put back at the front of its zygote's queue.
package sched

import "sort"

// Test is one selected test as the scheduler sees it.
type Test struct {
	// Chain holds the keys of the zygotes the test needs, outermost first; the root is
	// implicit. Tests that share a prefix share those zygotes.
	Chain []string
	// Duration is the estimate from earlier runs in seconds; 0 when unknown.
	Duration float64
	// Batch groups tests of one zygote that a single runner runs in order ("" runs
	// the test on its own).
	Batch string
	// Alone: the test runs with no other test running anywhere (tach_serial marker).
	Alone bool
	// Phase: no test starts before every test of an earlier phase is done (pytest-order:
	// tests ordered before the unordered ones are phase 0, those after them 2).
	Phase int
}

// Kind of an Action.
type Kind int

// Action kinds.
const (
	Spawn  Kind = iota // zygote Zygote forks zygote Child
	Run                // zygote Zygote forks runner Runner for Tests
	Assign             // idle persistent runner Runner takes Tests
	Retire             // idle persistent runner Runner exits
)

// Action is one command.
type Action struct {
	Kind   Kind
	Zygote int
	Child  int    // Spawn
	Key    string // Spawn
	Runner int    // Run, Assign, Retire
	Tests  []int  // Spawn: every test under the new zygote; Run/Assign: the batch
	Final  bool   // the zygote's last unit
}

type state int

const (
	unborn   state = iota
	spawning       // told to spawn, not ready yet
	ready
	exited
)

type unit struct {
	child  *Zygote // nil for a batch
	tests  []int
	weight float64
	first  int  // collection position of its first test: tie-breaker
	alone  bool // a test of the batch must run with nothing else running
	phase  int  // the earliest phase of its tests
}

// Zygote is one node of the zygote tree.
type Zygote struct {
	ID     int
	Key    string
	Parent *Zygote
	queue  []*unit // units not started, in dispatch order
	active int     // started units not done
	state  state
	serial bool
	tests  []int     // every test under this zygote, collection order
	kids   []*Zygote // child zygotes, creation order
	final  bool      // its last unit has been dispatched
	told   bool      // reported by Drained
	isLast bool      // it is its parent's final unit
	// busy counts processes doing work in this zygote's subtree: runners with an
	// unfinished batch and zygotes still setting up. A serial zygote's descendants
	// inherit what made it serial (a connected socket), so the whole subtree does one
	// thing at a time.
	busy int
}

// Runner is a process that runs batches of tests for one zygote.
type Runner struct {
	ID         int
	Zygote     *Zygote
	Persistent bool
	batch      []int // tests of the current batch not yet done
	final      bool
	alive      bool
	alone      bool // its batch runs with nothing else running
	atGate     bool // its final test waits at the teardown gate: it does nothing meanwhile
}

// Scheduler tracks the tree, the runners and the concurrency limit.
type Scheduler struct {
	limit      int
	persistent bool
	busy       int // processes counted against the limit
	zygotes    []*Zygote
	runners    []*Runner
	testZyg    []*Zygote
	testRunner []*Runner
	done       []bool
	left       int
	stopped    bool
	phase      int   // tests of later phases wait
	phaseLeft  []int // tests not done, by phase
	testPhase  []int
	phaseOver  []bool // the test no longer holds its phase back
	// aloneGoing counts runners running a batch that must run alone (at most one,
	// except while such runners wait at the teardown gate, where they run nothing).
	aloneGoing int
	// reserved counts, for the Next call in progress, the places kept for runners that
	// wait at the teardown gate for nothing but a place.
	reserved int
}

// New builds the tree for tests. At most limit runners (and zygotes setting up) are
// alive at once; persistent selects --tach-isolate none's long-lived runners.
func New(tests []Test, limit int, persistent bool) *Scheduler {
	if limit < 1 {
		limit = 1
	}
	s := &Scheduler{limit: limit, persistent: persistent, left: len(tests),
		testZyg: make([]*Zygote, len(tests)), testRunner: make([]*Runner, len(tests)), done: make([]bool, len(tests)),
		testPhase: make([]int, len(tests)), phaseOver: make([]bool, len(tests))}
	for i, t := range tests {
		p := max(t.Phase, 0)
		s.testPhase[i] = p
		for len(s.phaseLeft) <= p {
			s.phaseLeft = append(s.phaseLeft, 0)
		}
		s.phaseLeft[p]++
	}
	s.advance()
	root := &Zygote{ID: 0}
	s.zygotes = append(s.zygotes, root)
	kids := map[*Zygote]map[string]*Zygote{}
	batches := map[*Zygote]map[string]*unit{}
	for i, t := range tests {
		z := root
		z.tests = append(z.tests, i)
		for _, key := range t.Chain {
			if kids[z] == nil {
				kids[z] = map[string]*Zygote{}
			}
			c, ok := kids[z][key]
			if !ok {
				c = &Zygote{ID: len(s.zygotes), Key: key, Parent: z}
				s.zygotes = append(s.zygotes, c)
				z.kids = append(z.kids, c)
				kids[z][key] = c
				z.queue = append(z.queue, &unit{child: c, first: i, phase: s.testPhase[i]})
			}
			z = c
			z.tests = append(z.tests, i)
		}
		s.testZyg[i] = z
		if t.Batch != "" {
			if batches[z] == nil {
				batches[z] = map[string]*unit{}
			}
			if u, ok := batches[z][t.Batch]; ok {
				u.tests = append(u.tests, i)
				u.weight += t.Duration
				u.alone = u.alone || t.Alone
				u.phase = min(u.phase, s.testPhase[i])
				continue
			}
			u := &unit{tests: []int{i}, weight: t.Duration, first: i, alone: t.Alone, phase: s.testPhase[i]}
			batches[z][t.Batch] = u
			z.queue = append(z.queue, u)
			continue
		}
		z.queue = append(z.queue, &unit{tests: []int{i}, weight: t.Duration, first: i, alone: t.Alone, phase: s.testPhase[i]})
	}
	weigh(root)
	weighPhases(root)
	return s
}

// weighPhases gives each child-zygote unit the earliest phase under it.
func weighPhases(z *Zygote) int {
	p := -1
	for _, u := range z.queue {
		if u.child != nil {
			u.phase = weighPhases(u.child)
		}
		if p < 0 || u.phase < p {
			p = u.phase
		}
	}
	return max(p, 0)
}

// advance moves the current phase past phases with no test left.
func (s *Scheduler) advance() {
	for s.phase < len(s.phaseLeft)-1 && s.phaseLeft[s.phase] == 0 {
		s.phase++
	}
}

// markDone counts test i done (finished or lost); false if it already was.
func (s *Scheduler) markDone(i int) bool {
	if s.done[i] {
		return false
	}
	s.done[i] = true
	s.left--
	s.endPhase(i)
	return true
}

// endPhase counts test i out of its phase: it is done, or it waits at the teardown
// gate (its call is over; what it waits for may be of a later phase).
func (s *Scheduler) endPhase(i int) {
	if !s.phaseOver[i] {
		s.phaseOver[i] = true
		s.phaseLeft[s.testPhase[i]]--
		s.advance()
	}
}

// weigh orders every zygote's queue longest-first and returns the subtree's weight.
func weigh(z *Zygote) float64 {
	total := 0.0
	for _, u := range z.queue {
		if u.child != nil {
			u.weight = weigh(u.child)
		}
		total += u.weight
	}
	sort.SliceStable(z.queue, func(i, j int) bool {
		if z.queue[i].weight != z.queue[j].weight {
			return z.queue[i].weight > z.queue[j].weight
		}
		return z.queue[i].first < z.queue[j].first
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

// Left is the number of tests not yet done (finished or lost).
func (s *Scheduler) Left() int { return s.left }

// Busy is the number of processes counted against the limit.
func (s *Scheduler) Busy() int { return s.busy }

// RootReady records that the root zygote is up.
func (s *Scheduler) RootReady() { s.zygotes[0].state = ready }

// Ready records that zygote id has set itself up and accepts commands.
func (s *Scheduler) Ready(id int) {
	if z := s.Zygote(id); z != nil && z.state == spawning {
		z.state = ready
		s.busy--
		s.addBusy(z, -1)
	}
}

// SettingUp returns the zygotes told to spawn that are not ready yet.
func (s *Scheduler) SettingUp() []int {
	var out []int
	for _, z := range s.zygotes {
		if z.state == spawning {
			out = append(out, z.ID)
		}
	}
	return out
}

// SetSerial makes zygote id's subtree run one runner at a time from now on.
func (s *Scheduler) SetSerial(id int) {
	if z := s.Zygote(id); z != nil {
		z.serial = true
	}
}

// Stop ends dispatching: Next returns only retirements from now on.
func (s *Scheduler) Stop() { s.stopped = true }

// Next returns the actions that can start now, marking them started.
func (s *Scheduler) Next() []Action {
	var out []Action
	for _, r := range s.runners {
		if r.alive && r.Persistent && len(r.batch) == 0 && (s.stopped || r.Zygote.state != ready || s.unitAt(r.Zygote, true) < 0) {
			// Nothing queued that this runner could take: let it go. Child zygotes its
			// zygote still has queued need processes of their own, and an idle runner
			// kept for them would hold a place they are waiting for.
			s.release(r)
			out = append(out, Action{Kind: Retire, Zygote: r.Zygote.ID, Runner: r.ID})
		}
	}
	if s.stopped {
		return out
	}
	// A runner at the teardown gate gave its place back while it waited; once it may go
	// through it needs one again, before new work: else every finished test's place
	// went to a new unit, the gated runners (and their zygotes, and the zygotes' reused
	// processes) would wait for the run to wind down, and zygotes would pile up.
	s.reserved = 0
	for _, r := range s.runners {
		if r.alive && r.atGate && s.gateClear(r) {
			s.reserved++
		}
	}
	for {
		a, ok := s.find(s.zygotes[0])
		if !ok {
			return out
		}
		out = append(out, a)
	}
}

// Drained returns the zygotes (never the root) whose last unit is done: they have
// nothing left to do and may exit. Each is returned once.
func (s *Scheduler) Drained() []int {
	var out []int
	for _, z := range s.zygotes[1:] {
		if z.state == ready && z.final && z.active == 0 && len(z.queue) == 0 && !z.told {
			z.told = true
			out = append(out, z.ID)
		}
	}
	return out
}

// GateOpen reports whether runner id, running its zygote's final batch, may tear that
// zygote down (and its ancestors whose final unit it is part of): every other unit of
// each of them is done.
func (s *Scheduler) GateOpen(id int) bool {
	if id < 0 || id >= len(s.runners) {
		return false
	}
	r := s.runners[id]
	if r.atGate && s.busy >= s.limit {
		return false // tearing down takes a place again (Next keeps one for it)
	}
	return s.gateClear(r)
}

// gateClear reports whether runner r's final batch waits for nothing but, if it is at
// the gate, a place to tear down in.
func (s *Scheduler) gateClear(r *Runner) bool {
	if s.aloneGoing > 0 {
		return false // a test that must run alone is running: teardowns wait for it
	}
	if r.alone && s.zygotes[0].busy > 0 {
		return false // and its own teardown waits until nothing else runs
	}
	for z := r.Zygote; z != nil; z = z.Parent {
		if len(z.queue) > 0 || z.active != 1 || s.serialBusy(z) {
			return false
		}
		if !z.isLast {
			return true
		}
	}
	return true
}

// unitAt returns the position of the first unit in z's queue that may start in the
// current phase (only batches, if batch), or -1.
func (s *Scheduler) unitAt(z *Zygote, batch bool) int {
	for i, u := range z.queue {
		if u.phase <= s.phase && (!batch || u.child == nil) {
			return i
		}
	}
	return -1
}

func (s *Scheduler) idleRunner(z *Zygote) *Runner {
	for _, r := range s.runners {
		if r.alive && r.Persistent && r.Zygote == z && len(r.batch) == 0 {
			return r
		}
	}
	return nil
}

func (s *Scheduler) find(z *Zygote) (Action, bool) {
	if z.state != ready {
		return Action{}, false
	}
	// Work inside zygotes already started comes first: it keeps few zygotes alive.
	for _, c := range z.kids {
		if a, ok := s.find(c); ok {
			return a, true
		}
	}
	if len(z.queue) == 0 || s.aloneGoing > 0 || s.serialBusy(z) {
		return Action{}, false
	}
	// The last unit dispatched tears the zygote down; tests of a runner that died are
	// queued again after it may have been, and then run as ordinary units.
	final := len(z.queue) == 1 && z.Parent != nil && !z.final
	at := s.unitAt(z, false)
	var idle *Runner
	if s.persistent {
		// An idle runner of z takes z's next batch even where a child zygote is queued
		// before it: the runner is already there, the child needs a place of its own.
		if idle = s.idleRunner(z); idle != nil {
			if b := s.unitAt(z, true); b >= 0 {
				at = b
			} else {
				idle = nil
			}
		}
	}
	if at < 0 {
		return Action{}, false // what is queued waits for an earlier phase
	}
	u := z.queue[at]
	if u.alone && s.zygotes[0].busy > 0 {
		return Action{}, false
	}
	if idle == nil && s.busy+s.reserved >= s.limit {
		return Action{}, false
	}
	z.queue = append(z.queue[:at:at], z.queue[at+1:]...)
	z.active++
	z.final = z.final || final
	switch {
	case u.child != nil:
		s.busy++
		s.addBusy(u.child, 1)
		u.child.state = spawning
		u.child.isLast = final
		return Action{Kind: Spawn, Zygote: z.ID, Child: u.child.ID, Key: u.child.Key,
			Tests: u.child.tests, Final: final}, true
	case idle != nil:
		idle.batch, idle.final = append([]int(nil), u.tests...), final
		s.startBatch(idle, u.alone)
		return Action{Kind: Assign, Zygote: z.ID, Runner: idle.ID, Tests: u.tests, Final: final}, true
	}
	s.busy++
	r := &Runner{ID: len(s.runners), Zygote: z, Persistent: s.persistent,
		batch: append([]int(nil), u.tests...), final: final, alive: true}
	s.runners = append(s.runners, r)
	s.startBatch(r, u.alone)
	return Action{Kind: Run, Zygote: z.ID, Runner: r.ID, Tests: u.tests, Final: final}, true
}

// serialBusy reports whether a serial zygote at or above z already has work going on
// in its subtree.
func (s *Scheduler) serialBusy(z *Zygote) bool {
	for a := z; a != nil; a = a.Parent {
		if a.serial && a.busy > 0 {
			return true
		}
	}
	return false
}

func (s *Scheduler) addBusy(z *Zygote, n int) {
	for a := z; a != nil; a = a.Parent {
		a.busy += n
	}
}

func (s *Scheduler) startBatch(r *Runner, alone bool) {
	for _, i := range r.batch {
		s.testRunner[i] = r
	}
	r.alone = alone
	s.going(r, 1)
}

// going counts r in (n = 1) or out (n = -1) of the work going on: its zygotes'
// subtrees are busy (serial zygotes wait for them), and an alone batch holds off
// everything else.
func (s *Scheduler) going(r *Runner, n int) {
	s.addBusy(r.Zygote, n)
	if r.alone {
		s.aloneGoing += n
	}
}

// endBatch undoes startBatch's accounting when r's batch ends, however it ends (a
// runner at the gate was counted out when it got there).
func (s *Scheduler) endBatch(r *Runner) {
	if !r.atGate {
		s.going(r, -1)
	}
}

// release takes r out of the count against the limit for good.
func (s *Scheduler) release(r *Runner) {
	if r.alive {
		r.alive = false
		if !r.atGate {
			s.busy--
		}
	}
}

// leaveGate ends r's wait at the gate once its batch is over: a long-lived runner
// that lives on counts against the limit again.
func (s *Scheduler) leaveGate(r *Runner) {
	if r.atGate {
		r.atGate = false
		if r.alive {
			s.busy++
		}
	}
}

// AtGate records that runner id's final test waits at the teardown gate. It runs
// nothing until it goes through, so it no longer counts against the limit nor holds
// off serial zygotes' other work or tests that must run alone: any of those may be
// the very units it waits for.
func (s *Scheduler) AtGate(id int) {
	if id < 0 || id >= len(s.runners) {
		return
	}
	if r := s.runners[id]; r.alive && len(r.batch) > 0 && !r.atGate {
		r.atGate = true
		s.going(r, -1)
		s.busy--
		s.endPhase(r.batch[len(r.batch)-1])
	}
}

// Through records that runner id went through the gate (GateOpen said it may): it
// tears its scopes down now, and counts again.
func (s *Scheduler) Through(id int) {
	if id < 0 || id >= len(s.runners) {
		return
	}
	if r := s.runners[id]; r.atGate {
		r.atGate = false
		s.going(r, 1)
		s.busy++
	}
}

// TestDone records that test i finished (in whatever way).
func (s *Scheduler) TestDone(i int) {
	if !s.markDone(i) {
		return
	}
	r := s.testRunner[i]
	if r == nil {
		return
	}
	for k, t := range r.batch {
		if t == i {
			r.batch = append(r.batch[:k], r.batch[k+1:]...)
			break
		}
	}
	if len(r.batch) == 0 {
		s.batchDone(r)
	}
}

// batchDone closes r's batch: its unit is done; a one-shot runner stops counting.
func (s *Scheduler) batchDone(r *Runner) {
	r.Zygote.active--
	s.endBatch(r)
	if !r.Persistent {
		s.release(r)
	}
	s.leaveGate(r)
}

// RunnerExited records the end of runner id's process (the caller has already
// finished the test it was running). With requeue, tests of its batch it had not
// started go back to the front of its zygote's queue, for a fresh runner; without
// (a runner that died before starting anything would be replaced forever), they are
// done. Either way it returns them.
func (s *Scheduler) RunnerExited(id int, requeue bool) (rest []int) {
	if id < 0 || id >= len(s.runners) {
		return nil
	}
	r := s.runners[id]
	if len(r.batch) > 0 {
		rest = append(rest, r.batch...)
		r.batch = nil
		z := r.Zygote
		z.active--
		s.endBatch(r)
		switch {
		case requeue && z.state == ready && !s.stopped:
			z.queue = append([]*unit{{tests: rest, first: rest[0]}}, z.queue...)
			if r.final {
				z.final = false // the unit dispatched last tears the zygote down instead
			}
			for _, i := range rest {
				s.testRunner[i] = nil
			}
		case !requeue:
			for _, i := range rest {
				s.markDone(i)
			}
		default:
			rest = nil // the zygote is gone or the run stops: ZygoteExited reports them
		}
	}
	s.release(r)
	r.atGate = false
	return rest
}

// ZygoteExited records that the process of zygote id ended. It returns the tests that
// had not finished and now never will (the caller reports them as lost), and the
// runners that died with it.
func (s *Scheduler) ZygoteExited(id int) (lost []int, runners []int) {
	z := s.Zygote(id)
	if z == nil || z.state == exited {
		return nil, nil
	}
	lost, runners = s.kill(z)
	if p := z.Parent; p != nil {
		p.active--
	}
	return lost, runners
}

// kill marks z and everything under it exited; it returns the tests that were not done
// (now marked done) and the runners that were alive.
func (s *Scheduler) kill(z *Zygote) (lost []int, runners []int) {
	if z.state == spawning {
		s.busy--
		s.addBusy(z, -1)
	}
	z.state = exited
	var owed []int
	for _, r := range s.runners {
		if r.Zygote == z {
			if r.alive {
				runners = append(runners, r.ID)
				s.release(r)
			}
			if len(r.batch) > 0 {
				owed = append(owed, r.batch...)
				r.batch = nil
				s.endBatch(r)
			}
			r.atGate = false
		}
	}
	for _, u := range z.queue {
		owed = append(owed, u.tests...)
	}
	z.queue = nil
	for _, i := range owed {
		if s.markDone(i) {
			lost = append(lost, i)
		}
	}
	for _, c := range z.kids {
		if c.state != exited {
			l, rs := s.kill(c)
			lost, runners = append(lost, l...), append(runners, rs...)
		}
	}
	sort.Ints(lost)
	return lost, runners
}
