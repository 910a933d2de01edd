package sched

import (
	"fmt"
	"reflect"
	"testing"
)

func chain(keys ...string) []string { return keys }

func describe(acts []Action) []string {
	var out []string
	for _, a := range acts {
		var s string
		switch a.Kind {
		case Spawn:
			s = "spawn:" + a.Key
		case Run:
			s = "run"
		case Assign:
			s = "assign"
		case Retire:
			s = "retire"
		}
		if a.Final {
			s += "!"
		}
		out = append(out, s)
	}
	return out
}

func mustNext(t *testing.T, s *Scheduler, want ...string) []Action {
	t.Helper()
	acts := s.Next()
	if got := describe(acts); !(len(got) == 0 && len(want) == 0) && !reflect.DeepEqual(got, want) {
		t.Fatalf("Next() = %v, want %v", got, want)
	}
	return acts
}

func same(n int, c []string) []Test {
	out := make([]Test, n)
	for i := range out {
		out[i] = Test{Chain: c}
	}
	return out
}

func TestLastUnitIsFinalAndItsTeardownWaitsForTheOthers(t *testing.T) {
	s := New(same(3, chain("S", "M")), 2, false)
	mustNext(t, s) // root not ready
	s.RootReady()
	a := mustNext(t, s, "spawn:S") // the root's units are never final
	s.Ready(a[0].Child)
	a = mustNext(t, s, "spawn:M!") // M is S's only (so last) unit
	if !reflect.DeepEqual(a[0].Tests, []int{0, 1, 2}) {
		t.Fatalf("spawn tests = %v", a[0].Tests)
	}
	s.Ready(a[0].Child)
	a = mustNext(t, s, "run", "run")
	if a[0].Tests[0] != 0 || a[1].Tests[0] != 1 {
		t.Fatalf("order: %+v", a)
	}
	s.TestDone(0)
	a = mustNext(t, s, "run!") // test 2 is M's last: it starts now...
	final := a[0].Runner
	if a[0].Tests[0] != 2 {
		t.Fatalf("final test = %v", a[0].Tests)
	}
	if s.GateOpen(final) { // ...but may not tear M down while test 1 runs
		t.Fatal("gate open while a sibling runs")
	}
	s.TestDone(1)
	if !s.GateOpen(final) {
		t.Fatal("gate closed with nothing else left")
	}
	if d := s.Drained(); len(d) != 0 {
		t.Fatalf("drained early: %v", d)
	}
	s.TestDone(2)
	if s.Left() != 0 || s.Busy() != 0 { // a zygote counts only while it sets up
		t.Fatalf("left %d busy %d", s.Left(), s.Busy())
	}
	if d := s.Drained(); !reflect.DeepEqual(d, []int{2}) { // M; S waits for M's exit
		t.Fatalf("drained %v", d)
	}
	s.ZygoteExited(2)
	if d := s.Drained(); !reflect.DeepEqual(d, []int{1}) {
		t.Fatalf("drained %v", d)
	}
}

func TestGateWaitsForTheParentsOtherUnitsToo(t *testing.T) {
	s := New([]Test{{Chain: chain("S", "A")}, {Chain: chain("S", "B")}}, 2, false)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "spawn:A", "spawn:B!")
	za, zb := a[0].Child, a[1].Child
	s.Ready(za)
	s.Ready(zb)
	a = mustNext(t, s, "run!", "run!")
	ra, rb := a[0].Runner, a[1].Runner
	if !s.GateOpen(ra) { // A is not S's last unit: it tears down only itself
		t.Fatal("A's gate closed")
	}
	if s.GateOpen(rb) { // B's last test tears S down too: A must be gone first
		t.Fatal("B's gate open while A lives")
	}
	s.TestDone(0)
	s.ZygoteExited(za)
	if !s.GateOpen(rb) {
		t.Fatal("B's gate closed after A exited")
	}
}

func TestLongestFirstWithinAndAcrossGroups(t *testing.T) {
	tests := []Test{
		{Chain: chain("S", "A"), Duration: 1},
		{Chain: chain("S", "B"), Duration: 5},
		{Chain: chain("S", "B"), Duration: 0.1},
		{Chain: chain("S", "A"), Duration: 3},
	}
	s := New(tests, 1, false)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "spawn:B") // B weighs 5.1, A 4: B first; A is S's last unit
	b := a[0].Child
	s.Ready(b)
	a = mustNext(t, s, "run")
	if a[0].Tests[0] != 1 {
		t.Fatalf("want the 5 s test first, got %v", a[0].Tests)
	}
	s.TestDone(1)
	a = mustNext(t, s, "run!") // B's last test
	s.TestDone(a[0].Tests[0])
	a = mustNext(t, s, "spawn:A!")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "run")
	if a[0].Tests[0] != 3 {
		t.Fatalf("want the 3 s test, got %v", a[0].Tests)
	}
}

func TestLimitCountsZygotesSettingUp(t *testing.T) {
	s := New([]Test{{Chain: chain("S", "A")}, {Chain: chain("S", "B")}, {Chain: chain("S", "C")}}, 2, false)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)                      // S's slot frees when it is ready
	a = mustNext(t, s, "spawn:A", "spawn:B") // two setting up fill both slots
	mustNext(t, s)
	s.Ready(a[0].Child)
	mustNext(t, s, "run!") // A's test takes the slot A's setup held; B still sets up
	if s.Busy() != 2 {
		t.Fatalf("busy = %d", s.Busy())
	}
}

func TestBatchesRunInOrderAndTheLastWaits(t *testing.T) {
	tests := []Test{
		{Chain: chain("S"), Batch: "m1"}, {Chain: chain("S"), Batch: "m1"}, {Chain: chain("S"), Batch: "m1"},
		{Chain: chain("S"), Batch: "m2"},
	}
	s := New(tests, 2, false)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "run", "run!") // m1 (equal weights: collection order), then m2, the last
	if !reflect.DeepEqual(a[0].Tests, []int{0, 1, 2}) || !reflect.DeepEqual(a[1].Tests, []int{3}) {
		t.Fatalf("batches = %v %v", a[0].Tests, a[1].Tests)
	}
	last := a[1].Runner
	s.TestDone(0)
	s.TestDone(1)
	if s.GateOpen(last) {
		t.Fatal("m2 may tear down while m1 still runs")
	}
	s.TestDone(2)
	if !s.GateOpen(last) {
		t.Fatal("gate closed after m1 finished")
	}
}

func TestRunnerDeathRequeuesUnstartedTests(t *testing.T) {
	tests := []Test{{Chain: chain("S"), Batch: "m"}, {Chain: chain("S"), Batch: "m"}, {Chain: chain("S"), Batch: "m"}, {Chain: chain("S")}}
	s := New(tests, 1, false)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "run")
	s.TestDone(0)
	s.TestDone(1) // test 1 crashed and was finished as such
	if got := s.RunnerExited(a[0].Runner, true); !reflect.DeepEqual(got, []int{2}) {
		t.Fatalf("requeued %v", got)
	}
	a = mustNext(t, s, "run") // the rest of the batch, on a fresh runner, first
	if !reflect.DeepEqual(a[0].Tests, []int{2}) {
		t.Fatalf("batch = %v", a[0].Tests)
	}
}

func TestRunnerThatNeverStartedLosesItsBatch(t *testing.T) {
	s := New([]Test{{Chain: chain("S"), Batch: "m"}, {Chain: chain("S"), Batch: "m"}}, 1, false)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "run!")
	if got := s.RunnerExited(a[0].Runner, false); !reflect.DeepEqual(got, []int{0, 1}) {
		t.Fatalf("rest = %v", got)
	}
	mustNext(t, s)
	if s.Left() != 0 || s.Busy() != 0 {
		t.Fatalf("left %d busy %d", s.Left(), s.Busy())
	}
}

func TestPersistentRunnersTakeBatchAfterBatchThenRetire(t *testing.T) {
	tests := []Test{{Chain: chain("S"), Batch: "a"}, {Chain: chain("S"), Batch: "b"}, {Chain: chain("S"), Batch: "c"}}
	s := New(tests, 1, true)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "run")
	r := a[0].Runner
	s.TestDone(0)
	a = mustNext(t, s, "assign")
	if a[0].Runner != r || a[0].Tests[0] != 1 {
		t.Fatalf("%+v", a)
	}
	s.TestDone(1)
	a = mustNext(t, s, "assign!")
	s.TestDone(2)
	mustNext(t, s, "retire")
	if s.Busy() != 0 || s.Left() != 0 {
		t.Fatalf("busy %d left %d", s.Busy(), s.Left())
	}
}

func TestZygoteExitLosesItsUnfinishedTests(t *testing.T) {
	tests := []Test{{Chain: chain("S", "M")}, {Chain: chain("S", "M")}, {Chain: chain("S", "N")}}
	s := New(tests, 4, false)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	sz := a[0].Child
	s.Ready(sz)
	a = mustNext(t, s, "spawn:M", "spawn:N!")
	m := a[0].Child
	s.Ready(m)
	a = mustNext(t, s, "run", "run!")
	s.TestDone(a[0].Tests[0])
	lost, runners := s.ZygoteExited(m) // M crashed while its last test ran
	if !reflect.DeepEqual(lost, []int{1}) || len(runners) != 1 {
		t.Fatalf("lost = %v runners %v", lost, runners)
	}
	if lost, _ = s.ZygoteExited(sz); !reflect.DeepEqual(lost, []int{2}) { // N never got ready
		t.Fatalf("lost = %v", lost)
	}
	if s.Left() != 0 || s.Busy() != 0 {
		t.Fatalf("left %d busy %d", s.Left(), s.Busy())
	}
}

func TestRootExitLosesEverything(t *testing.T) {
	s := New(same(2, chain("S")), 2, false)
	s.RootReady()
	mustNext(t, s, "spawn:S")
	if lost, _ := s.ZygoteExited(0); len(lost) != 2 {
		t.Fatalf("lost = %v", lost)
	}
	if s.Left() != 0 || s.Busy() != 0 {
		t.Fatalf("left %d busy %d", s.Left(), s.Busy())
	}
}

func TestSerialZygoteRunsOneUnitAtATime(t *testing.T) {
	s := New(same(3, chain("S")), 4, false)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.SetSerial(a[0].Child)
	s.Ready(a[0].Child)
	mustNext(t, s, "run")
	mustNext(t, s)
	s.TestDone(0)
	mustNext(t, s, "run")
	s.TestDone(1)
	mustNext(t, s, "run!")
}

func TestSerialSubtreeRunsOneRunnerAtATime(t *testing.T) {
	s := New([]Test{{Chain: chain("S", "A")}, {Chain: chain("S", "A")}, {Chain: chain("S", "B")}}, 4, false)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	sz := a[0].Child
	s.SetSerial(sz) // S holds a connection; A and B are forked from it and share it
	s.Ready(sz)
	a = mustNext(t, s, "spawn:A") // one thing at a time in S's subtree: A sets up...
	s.Ready(a[0].Child)
	a = mustNext(t, s, "run") // ...then A's first test (A's children come first)
	s.TestDone(a[0].Tests[0])
	a = mustNext(t, s, "run!")
	s.TestDone(a[0].Tests[0])
	mustNext(t, s, "spawn:B!")
}

func TestAloneTestRunsWithNothingElse(t *testing.T) {
	tests := []Test{{Chain: chain("S")}, {Chain: chain("S"), Alone: true}, {Chain: chain("S")}, {Chain: chain("S")}}
	s := New(tests, 4, false)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "run") // test 0; test 1 must wait until nothing runs
	s.TestDone(a[0].Tests[0])
	a = mustNext(t, s, "run")
	if a[0].Tests[0] != 1 {
		t.Fatalf("want the alone test, got %v", a[0].Tests)
	}
	mustNext(t, s) // and nothing starts beside it
	s.TestDone(1)
	mustNext(t, s, "run", "run!")
}

func TestStopEndsDispatchAndRetiresIdleRunners(t *testing.T) {
	tests := []Test{{Chain: chain("S"), Batch: "a"}, {Chain: chain("S"), Batch: "b"}, {Chain: chain("S"), Batch: "c"}}
	s := New(tests, 1, true)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	mustNext(t, s, "run")
	s.Stop()
	s.TestDone(0)
	mustNext(t, s, "retire")
}

// A module of many classes, each a zygote of its own, run in the order the supervisor
// drives the scheduler: a finished test's place is offered to Next before the gated
// runners are asked again. The runner of a class's last test waits at the teardown gate
// without its place; it must get one back before new classes start, or every class
// zygote (with its test processes) stays alive until the run winds down.
func TestGatedRunnersGoThroughBeforeNewZygotesStart(t *testing.T) {
	const classes, perClass, limit = 40, 5, 2
	var tests []Test
	for c := 0; c < classes; c++ {
		for i := 0; i < perClass; i++ {
			tests = append(tests, Test{Chain: chain("S", "M", fmt.Sprintf("C%d", c))})
		}
	}
	s := New(tests, limit, false)
	s.RootReady()
	type run struct {
		id     int
		tests  []int
		final  bool
		passed bool // through the gate
	}
	var running []*run
	var settingUp []int // spawned zygotes: ready a step later (setting up takes time)
	waiting := map[int]*run{}
	alive, maxAlive := 0, 0
	for step := 0; s.Left() > 0; step++ {
		if step > 100000 {
			t.Fatalf("no end: %d tests left", s.Left())
		}
		for _, id := range settingUp {
			s.Ready(id)
		}
		settingUp = settingUp[:0]
		for _, a := range s.Next() {
			switch a.Kind {
			case Spawn:
				alive++
				settingUp = append(settingUp, a.Child)
			case Run:
				running = append(running, &run{id: a.Runner, tests: a.Tests, final: a.Final})
			}
		}
		for id, r := range waiting {
			if s.GateOpen(id) {
				s.Through(id)
				delete(waiting, id)
				r.passed = true
				running = append(running, r)
			}
		}
		if alive > maxAlive {
			maxAlive = alive
		}
		for _, id := range s.Drained() { // told to exit: it does
			s.ZygoteExited(id)
			alive--
		}
		if len(running) == 0 {
			continue
		}
		r := running[0]
		running = running[1:]
		if r.final && !r.passed { // its test ran: it waits to tear its class down
			s.AtGate(r.id)
			waiting[r.id] = r
			continue
		}
		for _, i := range r.tests {
			s.TestDone(i)
		}
	}
	// session, module, and the classes going: the ones with a test running or tearing
	// down (at most limit) and the next one setting up.
	if maxAlive > limit+3 {
		t.Fatalf("%d zygotes alive at once with %d places", maxAlive, limit)
	}
}
