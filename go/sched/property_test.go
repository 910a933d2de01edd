package sched

import (
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"
)

// The property: whatever the fork tree (scopes, other values of parametrized
// higher-scoped fixtures, batches, serial zygotes, tests that run alone), the
// concurrency limit, the isolate mode, the order in which processes report back and
// which runners die mid-batch, every schedule runs every test exactly once, never has
// more processes going than the limit, and ends: every zygote drains and exits and
// every runner exits. The trees and event orders are drawn from fixed seeds, so a
// failure reproduces; the failing seed and the tree are in the message.

// randomTests draws a selection whose chains look like pytest's: an optional session
// parameter, a package, a module, a class; tests of one module may share a batch.
func randomTests(rng *rand.Rand) []Test {
	levels := [][]string{{"", "S[x]", "S[y]"}, {"", "p1", "p2"}, {"", "m1", "m2", "m3"}, {"", "C"}}
	n := 1 + rng.Intn(24)
	tests := make([]Test, n)
	for i := range tests {
		var c []string
		for _, keys := range levels {
			if k := keys[rng.Intn(len(keys))]; k != "" {
				c = append(c, k)
			}
		}
		t := Test{Chain: c, Duration: float64(rng.Intn(4)), Phase: 1}
		if rng.Intn(6) == 0 { // pytest-order: before (0) or after (2) the unordered tests
			t.Phase = 2 * rng.Intn(2)
		}
		if rng.Intn(3) == 0 { // a batch's tests share a phase (the engine groups them so)
			t.Batch = fmt.Sprintf("b%d-%d", rng.Intn(2), t.Phase)
		}
		t.Alone = rng.Intn(25) == 0
		tests[i] = t
	}
	return tests
}

type simRunner struct {
	id      int
	zygote  int
	batch   []int
	final   bool
	started bool // it started a test (a death then requeues the rest)
	exiting bool // told to exit
	gate    int  // its final test: 1 waits at the teardown gate, 2 went through
}

type sim struct {
	t        *testing.T
	rng      *rand.Rand
	s        *Scheduler
	limit    int
	what     string
	tests    []Test
	runs     []int  // times each test ran to its end
	gated    []bool // it waited at the teardown gate (its call is over)
	spawning map[int]bool
	zygotes  map[int]bool // alive, ready, not root
	exiting  map[int]bool // zygotes told to exit
	runners  map[int]*simRunner
	deaths   int // runner deaths left to inject
}

func (m *sim) fail(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("%s: %s%s", m.what, fmt.Sprintf(format, args...), dump(m.s))
}

// dump describes the scheduler's state for a failure message.
func dump(s *Scheduler) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nscheduler: busy %d/%d, left %d, alone %d", s.busy, s.limit, s.left, s.aloneGoing)
	for _, z := range s.zygotes {
		var q []string
		for _, u := range z.queue {
			if u.child != nil {
				q = append(q, fmt.Sprintf("zygote %d", u.child.ID))
			} else {
				q = append(q, fmt.Sprint(u.tests))
			}
		}
		fmt.Fprintf(&b, "\n  zygote %d %q: state %d, serial %v, busy %d, active %d, final %v, queue %v",
			z.ID, z.Key, z.state, z.serial, z.busy, z.active, z.final, q)
	}
	for _, r := range s.runners {
		if r.alive || len(r.batch) > 0 {
			fmt.Fprintf(&b, "\n  runner %d of zygote %d: persistent %v, batch %v, final %v", r.ID, r.Zygote.ID, r.Persistent, r.batch, r.final)
		}
	}
	return b.String()
}

// apply carries out what Next and Drained returned, as the supervisor does.
func (m *sim) apply() {
	for _, a := range m.s.Next() {
		if a.Kind == Run || a.Kind == Assign {
			for _, i := range a.Tests {
				for j, n := range m.runs {
					if n == 0 && !m.gated[j] && m.tests[j].Phase < m.tests[i].Phase {
						m.fail("test %d (phase %d) started before test %d (phase %d) ran",
							i, m.tests[i].Phase, j, m.tests[j].Phase)
					}
				}
			}
		}
		switch a.Kind {
		case Spawn:
			m.spawning[a.Child] = true
		case Run:
			if m.runners[a.Runner] != nil {
				m.fail("runner %d started twice", a.Runner)
			}
			m.runners[a.Runner] = &simRunner{id: a.Runner, zygote: a.Zygote, batch: append([]int(nil), a.Tests...), final: a.Final}
		case Assign:
			r := m.runners[a.Runner]
			if r == nil || len(r.batch) > 0 || r.exiting {
				m.fail("assign to runner %d that cannot take a batch", a.Runner)
			}
			r.batch, r.final, r.gate = append([]int(nil), a.Tests...), a.Final, 0
		case Retire:
			r := m.runners[a.Runner]
			if r == nil || len(r.batch) > 0 {
				m.fail("retire of runner %d that is busy or gone", a.Runner)
			}
			r.exiting = true
		}
	}
	for _, id := range m.s.Drained() {
		m.exiting[id] = true
	}
	if procs := len(m.spawning) + m.countRunners(); procs > m.limit {
		m.fail("%d processes going, limit %d", procs, m.limit)
	}
	// A test that must run alone runs with nothing else going (runners waiting at the
	// teardown gate run nothing).
	going, alone := len(m.spawning), false
	for _, r := range m.runners {
		if len(r.batch) > 0 && r.gate != 1 {
			going++
			alone = alone || m.s.runners[r.id].alone
		}
	}
	if alone && going > 1 {
		m.fail("a test that must run alone runs beside %d other processes", going-1)
	}
}

// countRunners counts the runners that hold a place: a one-shot runner gives its
// place up when its batch ends and a long-lived one when told to exit, though either
// process may take a moment longer to go; a runner waiting at the teardown gate runs
// nothing meanwhile.
func (m *sim) countRunners() int {
	n := 0
	for _, r := range m.runners {
		if r.gate == 1 {
			continue
		}
		if len(r.batch) > 0 || m.s.runners[r.id].Persistent && !r.exiting {
			n++
		}
	}
	return n
}

// events lists what could happen next, each as a function that makes it happen.
func (m *sim) events() []func() {
	var out []func()
	for _, id := range sortedKeys(m.spawning) {
		id := id
		out = append(out, func() {
			delete(m.spawning, id)
			if m.rng.Intn(5) == 0 {
				m.s.SetSerial(id) // it holds a connected socket
			}
			m.s.Ready(id)
			m.zygotes[id] = true
		})
	}
	for _, id := range sortedKeys(m.exiting) {
		id := id
		out = append(out, func() {
			delete(m.exiting, id)
			delete(m.zygotes, id)
			if lost, runners := m.s.ZygoteExited(id); len(lost) > 0 || len(runners) > 0 {
				m.fail("drained zygote %d exited with tests %v and runners %v", id, lost, runners)
			}
		})
	}
	ids := make([]int, 0, len(m.runners))
	for id := range m.runners {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	for _, id := range ids {
		r := m.runners[id]
		switch {
		case r.exiting || (len(r.batch) == 0 && !m.s.runners[id].Persistent):
			out = append(out, func() { // the process ends
				delete(m.runners, r.id)
				if rest := m.s.RunnerExited(r.id, r.started); len(rest) > 0 {
					m.fail("runner %d exited with tests %v", r.id, rest)
				}
			})
		case len(r.batch) == 1 && r.final && r.gate == 0:
			out = append(out, func() { // its last test waits at the teardown gate
				r.gate = 1
				m.gated[r.batch[0]] = true
				m.s.AtGate(r.id)
			})
		case r.gate == 1:
			if m.s.GateOpen(r.id) {
				out = append(out, func() {
					r.gate = 2
					m.s.Through(r.id)
				})
			}
		case len(r.batch) > 0:
			{
				out = append(out, func() { // its current test ends
					i := r.batch[0]
					r.batch, r.started = r.batch[1:], true
					m.runs[i]++
					m.s.TestDone(i)
				})
			}
			if m.deaths > 0 && len(r.batch) > 1 {
				out = append(out, func() { // it dies in its current test
					m.deaths--
					i := r.batch[0]
					delete(m.runners, r.id)
					m.runs[i]++
					m.s.TestDone(i)
					m.s.RunnerExited(r.id, true)
				})
			}
		}
	}
	return out
}

func sortedKeys(set map[int]bool) []int {
	out := make([]int, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

func describeTests(tests []Test) string {
	var b strings.Builder
	for i, t := range tests {
		fmt.Fprintf(&b, "\n  %d: %s batch=%q d=%g alone=%v phase=%d", i, strings.Join(t.Chain, "/"), t.Batch, t.Duration, t.Alone, t.Phase)
	}
	return b.String()
}

func TestEverySchedulRunsEveryTestAndEnds(t *testing.T) {
	for seed := int64(1); seed <= 4000; seed++ {
		rng := rand.New(rand.NewSource(seed))
		tests := randomTests(rng)
		limit := 1 + rng.Intn(4)
		persistent := rng.Intn(2) == 0
		m := &sim{t: t, rng: rng, s: New(tests, limit, persistent), limit: limit, tests: tests,
			what: fmt.Sprintf("seed %d, limit %d, persistent %v, tests:%s", seed, limit, persistent, describeTests(tests)),
			runs: make([]int, len(tests)), gated: make([]bool, len(tests)),
			spawning: map[int]bool{}, zygotes: map[int]bool{}, exiting: map[int]bool{}, runners: map[int]*simRunner{},
			deaths: rng.Intn(3)}
		m.s.RootReady()
		m.apply()
		for step := 0; ; step++ {
			if step > 10000 {
				m.fail("no end after %d steps", step)
			}
			ev := m.events()
			if len(ev) == 0 {
				break
			}
			ev[rng.Intn(len(ev))]()
			m.apply()
		}
		for i, n := range m.runs {
			if n != 1 {
				m.fail("test %d ran %d times (the run stalled with %d left, %d busy, runners %v, zygotes %v)",
					i, n, m.s.Left(), m.s.Busy(), len(m.runners), sortedKeys(m.zygotes))
			}
		}
		if m.s.Left() != 0 || m.s.Busy() != 0 || len(m.zygotes) != 0 || len(m.runners) != 0 {
			m.fail("ended with %d left, %d busy, zygotes %v, %d runners", m.s.Left(), m.s.Busy(), sortedKeys(m.zygotes), len(m.runners))
		}
	}
}

// The reduced case from a real suite: two modules with a test each and a third whose
// test uses a parametrized session fixture; --tach-isolate none with one or two
// workers ran the first two and then waited forever (both long-lived runners idle,
// counted against the limit, while the session zygote still had a child zygote
// queued that no runner can take).
func TestIdleRunnersMakeWayForAZygoteTheyCannotServe(t *testing.T) {
	for limit := 1; limit <= 2; limit++ {
		tests := []Test{{Chain: chain("a"), Batch: "a"}, {Chain: chain("b"), Batch: "b"}, {Chain: chain("S[x]", "c"), Batch: "c"}}
		s := New(tests, limit, true)
		s.RootReady()
		var going []Action
		for step := 0; s.Left() > 0; step++ {
			acts := s.Next()
			going = append(going, acts...)
			if len(going) == 0 {
				t.Fatalf("limit %d: stalled with %d tests left", limit, s.Left())
			}
			a := going[0]
			going = going[1:]
			switch a.Kind {
			case Spawn:
				s.Ready(a.Child)
			case Run, Assign:
				for _, i := range a.Tests {
					s.TestDone(i)
				}
			case Retire:
				s.RunnerExited(a.Runner, false)
			}
		}
	}
}
