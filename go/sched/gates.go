package sched

// The two gates of stress mode (a call limit), kept here with the rest of the policy:
// which waiting test calls next (Turns), and when a finished test's event may go to
// the main process (InOrder). Both are generic over the caller's handle for one
// dispatch of a test (the supervisor's *testRun: a test dispatched again after its
// runner died is a new handle), and know nothing of processes or time.

// Turns is the call gate: at most limit tests run their call phase at once, and turns
// go in dispatch order, as tests would run one after another (a test set up sooner
// than the one before it still waits for it, so -x stops where a plain run stops).
type Turns[T comparable] struct {
	limit   int
	order   []T // dispatched, not yet through the gate
	calling int // turns held
	state   map[T]*turn
}

type turn struct {
	awaiting bool // set up, asking for its turn
	over     bool // had its turn, or ended without one: not in line
	held     bool // calling now
}

// NewTurns makes a call gate of limit turns.
func NewTurns[T comparable](limit int) *Turns[T] {
	return &Turns[T]{limit: limit, state: map[T]*turn{}}
}

// Dispatched puts t in line, after every test dispatched before it.
func (g *Turns[T]) Dispatched(t T) {
	g.order = append(g.order, t)
	g.state[t] = &turn{}
}

// Await records that t asks for a turn. It is false (and changes nothing) when t
// cannot ask: it is not in line, holds a turn, or asks already. A test whose turn is
// over and that asks again (a plugin reruns it after a passed call) goes first.
func (g *Turns[T]) Await(t T) bool {
	s := g.state[t]
	if s == nil || s.held || s.awaiting {
		return false
	}
	s.awaiting = true
	if s.over {
		s.over = false
		g.order = append([]T{t}, g.order...)
	}
	return true
}

// End ends t's part in the gate: its turn is over (given back if it held one), and it
// no longer holds the tests behind it up. Called when its call passed, when it waits
// at the teardown gate, when it finishes.
func (g *Turns[T]) End(t T) {
	s := g.state[t]
	if s == nil {
		return
	}
	s.over = true
	if s.held {
		s.held = false
		g.calling--
	}
}

// Holds reports whether t is calling now.
func (g *Turns[T]) Holds(t T) bool {
	s := g.state[t]
	return s != nil && s.held
}

// Forget drops t's state (it finished); it is skipped if still in line.
func (g *Turns[T]) Forget(t T) {
	g.End(t)
	delete(g.state, t)
}

// Grant gives free turns to the tests first in line that ask for one, and returns
// them; a test in line that no longer may call (live false: its runner died, or it
// was dispatched again) or whose turn is over is dropped from the line. A test still
// setting up holds the line.
func (g *Turns[T]) Grant(live func(T) bool) []T {
	var out []T
	for g.calling < g.limit && len(g.order) > 0 {
		t := g.order[0]
		s := g.state[t]
		if s == nil || s.over || !live(t) {
			g.order = g.order[1:]
			continue
		}
		if !s.awaiting {
			break
		}
		g.order = g.order[1:]
		s.awaiting, s.over, s.held = false, true, true
		g.calling++
		out = append(out, t)
	}
	return out
}

// InOrder holds finished tests' events back until the events of the tests dispatched
// before them are out. With a call limit a test whose call passed gives its turn on
// before its teardown and its reports, so the next test can fail and report first;
// with -x the main process would then stop before replaying the earlier test, which
// a plain run reports.
type InOrder[T comparable, E any] struct {
	order  []T
	events map[T]E
}

// NewInOrder makes an empty InOrder.
func NewInOrder[T comparable, E any]() *InOrder[T, E] {
	return &InOrder[T, E]{events: map[T]E{}}
}

// Dispatched puts t in line.
func (o *InOrder[T, E]) Dispatched(t T) { o.order = append(o.order, t) }

// Finished records t's event.
func (o *InOrder[T, E]) Finished(t T, e E) { o.events[t] = e }

// Out returns the events that may go now, in dispatch order: up to the first test in
// line still running (running true); a test in line with no event that is not running
// was dispatched again (it comes again then), and is skipped.
func (o *InOrder[T, E]) Out(running func(T) bool) []E {
	var out []E
	for len(o.order) > 0 {
		t := o.order[0]
		e, ok := o.events[t]
		if !ok {
			if running(t) {
				break
			}
			o.order = o.order[1:]
			continue
		}
		delete(o.events, t)
		out = append(out, e)
		o.order = o.order[1:]
	}
	return out
}
