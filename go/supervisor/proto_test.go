package supervisor

import (
	"fmt"
	"os"
	"reflect"
	"sort"
	"sync"
	"testing"
)

// TestMain holds every event any test of this package makes the supervisor emit to
// its declaration in proto.go: an event or a field the Python side was not told of
// fails the package.
func TestMain(m *testing.M) {
	var mu sync.Mutex
	var bad []string
	queuedHook = func(e Event) {
		if why := undeclared(e); why != "" {
			mu.Lock()
			bad = append(bad, why)
			mu.Unlock()
		}
	}
	code := m.Run()
	if len(bad) > 0 {
		fmt.Fprintf(os.Stderr, "events that proto.go's events does not declare: %v\n", bad)
		code = 1
	}
	os.Exit(code)
}

// undeclared says what in e its declaration lacks ("" when nothing).
func undeclared(e Event) string {
	t, _ := e["t"].(string)
	fields, ok := events[t]
	if !ok {
		return fmt.Sprintf("event %q", t)
	}
	for k := range e {
		found := false
		for _, f := range fields {
			found = found || f == k
		}
		if !found {
			return fmt.Sprintf("field %q of event %q", k, t)
		}
	}
	return ""
}

func TestUndeclaredEventsAreFound(t *testing.T) {
	if why := undeclared(Event{"t": "note", "msg": "x"}); why != "" {
		t.Errorf("a declared note: %s", why)
	}
	if why := undeclared(Event{"t": "note", "msg": "x", "extra": 1}); why != `field "extra" of event "note"` {
		t.Errorf("an extra field: %q", why)
	}
	if why := undeclared(Event{"t": "nope"}); why != `event "nope"` {
		t.Errorf("an unknown event: %q", why)
	}
}

func TestProtocolDescribesEveryMessage(t *testing.T) {
	d := Protocol()
	var names []string
	for name := range d.Commands {
		names = append(names, name)
	}
	sort.Strings(names)
	if want := []string{"batch", "exit", "go", "run", "spawn"}; !reflect.DeepEqual(names, want) {
		t.Errorf("commands %v, want %v", names, want)
	}
	if got, want := d.Commands["run"], []string{"t", "runner", "tests", "final", "persistent", "slot"}; !reflect.DeepEqual(got, want) {
		t.Errorf("run's fields %v, want %v", got, want)
	}
	if len(d.Frames) != len(schema) || d.Frames["exited"]["utime"] != "number" || d.Frames["hello"]["role"] != "string" {
		t.Errorf("frames not described from the schema: %v", d.Frames)
	}
	if !reflect.DeepEqual(d.Events, events) {
		t.Errorf("events %v", d.Events)
	}
}
