package sched

import (
	"reflect"
	"testing"
)

func chain(keys ...string) []string { return keys }

func kinds(acts []Action) []string {
	var out []string
	for _, a := range acts {
		s := "run"
		if a.Kind == Spawn {
			s = "spawn:" + a.Key
		}
		if a.InPlace {
			s += "!"
		}
		out = append(out, s)
	}
	return out
}

func mustNext(t *testing.T, s *Scheduler, want ...string) []Action {
	t.Helper()
	acts := s.Next()
	if got := kinds(acts); !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Fatalf("Next() = %v, want %v", got, want)
	}
	return acts
}

func TestLastUnitRunsInPlaceAfterTheOthers(t *testing.T) {
	s := New([]Test{{Chain: chain("S", "M")}, {Chain: chain("S", "M")}, {Chain: chain("S", "M")}}, 2)
	mustNext(t, s) // root not ready
	s.RootReady()
	a := mustNext(t, s, "spawn:S") // the root never hands over
	s.Ready(a[0].Child)
	a = mustNext(t, s, "spawn:M!") // M is S's only (so last) unit: S becomes M
	if !reflect.DeepEqual(a[0].Tests, []int{0, 1, 2}) {
		t.Fatalf("spawn tests = %v", a[0].Tests)
	}
	s.Ready(a[0].Child)
	a = mustNext(t, s, "run", "run")
	if a[0].Test != 0 || a[1].Test != 1 {
		t.Fatalf("order: %+v", a)
	}
	s.TestDone(0)
	mustNext(t, s) // test 2 is M's last: waits for test 1
	s.TestDone(1)
	a = mustNext(t, s, "run!")
	if a[0].Test != 2 {
		t.Fatalf("final test = %d", a[0].Test)
	}
	s.TestDone(2)
	if s.Left() != 0 || s.Busy() != 0 {
		t.Fatalf("left %d busy %d", s.Left(), s.Busy())
	}
}

func TestLongestFirstWithinAndAcrossGroups(t *testing.T) {
	tests := []Test{
		{Chain: chain("S", "A"), Duration: 1},
		{Chain: chain("S", "B"), Duration: 5},
		{Chain: chain("S", "B"), Duration: 0.1},
		{Chain: chain("S", "A"), Duration: 3},
	}
	s := New(tests, 1)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "spawn:B") // B weighs 5.1, A 4: B first; A is S's last unit
	b := a[0].Child
	s.Ready(b)
	a = mustNext(t, s, "run")
	if a[0].Test != 1 {
		t.Fatalf("want the 5 s test first, got %d", a[0].Test)
	}
	s.TestDone(1)
	a = mustNext(t, s, "run!") // B's last test, in place
	s.TestDone(a[0].Test)
	mustNext(t, s) // A must wait until B's process has exited
	if lost := s.Exited(b); len(lost) != 0 {
		t.Fatalf("lost %v", lost)
	}
	a = mustNext(t, s, "spawn:A!")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "run")
	if a[0].Test != 3 {
		t.Fatalf("want the 3 s test, got %d", a[0].Test)
	}
}

func TestLimitCountsZygotesSettingUp(t *testing.T) {
	s := New([]Test{{Chain: chain("S", "A")}, {Chain: chain("S", "B")}, {Chain: chain("S", "C")}}, 2)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	a = mustNext(t, s, "spawn:A", "spawn:B") // two setting up fill both slots
	s.Ready(a[0].Child)
	mustNext(t, s, "run!") // A's only test runs in place; B still setting up
	if s.Busy() != 2 {
		t.Fatalf("busy = %d", s.Busy())
	}
}

func TestExitedZygoteLosesItsUnfinishedTests(t *testing.T) {
	s := New([]Test{{Chain: chain("S", "M")}, {Chain: chain("S", "M")}, {Chain: chain("S", "N")}}, 4)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	sz := a[0].Child
	s.Ready(sz)
	a = mustNext(t, s, "spawn:M")
	m := a[0].Child
	s.Ready(m)
	a = mustNext(t, s, "run")
	s.TestDone(a[0].Test)
	mustNext(t, s, "run!")
	lost := s.Exited(m) // M crashed while running its last test
	if !reflect.DeepEqual(lost, []int{1}) {
		t.Fatalf("lost = %v", lost)
	}
	a = mustNext(t, s, "spawn:N!")
	lost = s.Exited(sz) // S crashes (it had become N) before N is ready
	if !reflect.DeepEqual(lost, []int{2}) {
		t.Fatalf("lost = %v", lost)
	}
	if s.Left() != 0 || s.Busy() != 0 {
		t.Fatalf("left %d busy %d", s.Left(), s.Busy())
	}
}

func TestRootExitLosesEverything(t *testing.T) {
	s := New([]Test{{Chain: chain("S")}, {Chain: chain("S")}}, 2)
	s.RootReady()
	mustNext(t, s, "spawn:S")
	if lost := s.Exited(0); len(lost) != 2 {
		t.Fatalf("lost = %v", lost)
	}
	if s.Left() != 0 || s.Busy() != 0 {
		t.Fatalf("left %d busy %d", s.Left(), s.Busy())
	}
}

func TestSerialZygoteRunsOneChildAtATime(t *testing.T) {
	s := New([]Test{{Chain: chain("S")}, {Chain: chain("S")}, {Chain: chain("S")}}, 4)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.SetSerial(a[0].Child)
	s.Ready(a[0].Child)
	mustNext(t, s, "run")
	s.TestDone(0)
	mustNext(t, s, "run")
	s.TestDone(1)
	mustNext(t, s, "run!")
}

func TestStopEndsDispatch(t *testing.T) {
	s := New([]Test{{Chain: chain("S")}, {Chain: chain("S")}, {Chain: chain("S")}}, 1)
	s.RootReady()
	a := mustNext(t, s, "spawn:S")
	s.Ready(a[0].Child)
	mustNext(t, s, "run")
	s.Stop()
	s.TestDone(0)
	mustNext(t, s)
}

func TestEmptyChainRunsUnderRootWithoutHandOver(t *testing.T) {
	// The root never runs tests in place: a chain-less test is forked from it.
	s := New([]Test{{}}, 1)
	s.RootReady()
	mustNext(t, s, "run")
}
