package sched

import (
	"reflect"
	"testing"
)

func always(string) bool { return true }

func TestTurnsGoInDispatchOrderUpToTheLimit(t *testing.T) {
	g := NewTurns[string](1)
	for _, name := range []string{"a", "b", "c"} {
		g.Dispatched(name)
	}
	// b is set up first, but a was dispatched before it: b waits for a.
	if !g.Await("b") {
		t.Fatal("b may ask")
	}
	if got := g.Grant(always); len(got) != 0 {
		t.Fatalf("granted %v while a sets up", got)
	}
	g.Await("a")
	if got := g.Grant(always); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("granted %v, want [a]", got)
	}
	if got := g.Grant(always); len(got) != 0 {
		t.Fatalf("granted %v beyond the limit", got)
	}
	if !g.Holds("a") || g.Holds("b") {
		t.Fatal("a holds the turn, b does not")
	}
	g.End("a") // its call passed
	if got := g.Grant(always); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("granted %v, want [b]", got)
	}
}

func TestTurnsRefuseWhatCannotBeAsked(t *testing.T) {
	g := NewTurns[string](2)
	if g.Await("x") {
		t.Error("a test never dispatched asked for a turn")
	}
	g.Dispatched("a")
	if !g.Await("a") || g.Await("a") {
		t.Error("a second ask while waiting must be refused")
	}
	g.Grant(always)
	if g.Await("a") {
		t.Error("an ask while holding the turn must be refused")
	}
}

func TestARerunAfterItsTurnGoesFirst(t *testing.T) {
	g := NewTurns[string](1)
	g.Dispatched("a")
	g.Dispatched("b")
	g.Await("a")
	g.Grant(always)
	g.End("a") // passed; then a plugin reruns it
	g.Await("b")
	if !g.Await("a") {
		t.Fatal("a rerun may ask again")
	}
	if got := g.Grant(always); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("granted %v, want the rerun [a] before b", got)
	}
}

func TestTestsThatMayNoLongerCallLeaveTheLine(t *testing.T) {
	g := NewTurns[string](1)
	g.Dispatched("dead")    // its runner died before it asked
	g.Dispatched("skipped") // ended without a call (its setup failed)
	g.Dispatched("c")
	g.End("skipped")
	g.Await("c")
	live := func(s string) bool { return s != "dead" }
	if got := g.Grant(live); !reflect.DeepEqual(got, []string{"c"}) {
		t.Fatalf("granted %v, want [c]", got)
	}
	g.Forget("c") // finished: the turn goes back
	g.Dispatched("d")
	g.Await("d")
	if got := g.Grant(always); !reflect.DeepEqual(got, []string{"d"}) {
		t.Fatalf("granted %v after c finished, want [d]", got)
	}
}

func TestEventsGoOutInDispatchOrder(t *testing.T) {
	o := NewInOrder[string, int]()
	for _, name := range []string{"a", "b", "c"} {
		o.Dispatched(name)
	}
	finished := map[string]bool{}
	running := func(s string) bool { return !finished[s] }
	finished["b"] = true
	o.Finished("b", 2)
	if got := o.Out(running); len(got) != 0 {
		t.Fatalf("b's event went out before a's: %v", got)
	}
	finished["a"] = true
	o.Finished("a", 1)
	if got := o.Out(running); !reflect.DeepEqual(got, []int{1, 2}) {
		t.Fatalf("out %v, want [1 2]", got)
	}
	// c was sent back to the queue (not running, no event): skipped, later ones go.
	finished["c"] = true
	o.Dispatched("c2")
	o.Finished("c2", 3)
	if got := o.Out(running); !reflect.DeepEqual(got, []int{3}) {
		t.Fatalf("out %v, want [3]", got)
	}
}
