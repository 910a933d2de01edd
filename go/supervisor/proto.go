// The protocol between tach's processes, written down once: the frames zygotes and
// runners send (schema, validated on every frame), the commands the supervisor sends
// them (typed structs), and the events Poll returns to the main process (events).
// python/pytest_tach/protocol.py is the Python side; tests/unit/test_protocol.py fails if the
// two disagree (it reads this side through Protocol, exported by go/core).
//
// Channels, each a unix socket in the run's private directory (4-byte big-endian
// length + one msgpack map with a "t" field; 16 MiB at most):
//
//	main process          supervisor (Go, in the main process)
//	  core.start(config) ---------> |
//	  core.poll() <---------------- |  test, abort, handover, note, stall ... end
//	  core.stop(mode) ------------> |  abort: zygotes tear their scopes down; kill
//
//	supervisor                    zygote (one connection each, opened after its fork)
//	     | <------------------- hello {role: zygote}
//	     | ---- spawn --------> |   fork a child zygote for these tests
//	     | <------------------- forked {zygote}, then (the child's own) hello, ready
//	     | ---- run ----------> |   fork (or reuse) a test process for a batch
//	     | <------------------- forked {runner} ... exited {pid, status}
//	     | <------------------- serial, per_process, handover, fail, error
//	     | ---- exit ---------> |   no more work (teardown: the run stopped early)
//
//	supervisor                    runner (connection opened by its zygote before the fork)
//	     | <------------------- hello {role: runner} (or take, on a resting connection)
//	     | <------------------- start, report*, warning*, handover, done   per test
//	     | <------------------- await_call / await ........ ---- go -----> |
//	     | ---- batch --------> |   (a long-lived runner, --tach-isolate none)
//	     | ---- exit ---------> |
//	     | <------------------- abort (pytest.exit(), KeyboardInterrupt in a test)
//	     | <------------------- rest (a reusable process: restored, keeps the connection)
//
// The zygote <-> reusable test process exchange is the zygote's own (a socketpair):
// python/pytest_tach/forked/sources.py draws it.

package supervisor

import (
	"reflect"
	"strings"

	"github.com/tach-dev/tach/go/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Frames the Python processes send. Every connection starts with hello.
//
// From a zygote:
//
//	hello   {role: "zygote", id, pid}
//	ready   {id}                                zygote id is set up
//	serial  {id, why}                           zygote id holds state its children must not share concurrently
//	per_process {id, why}                       zygote id leaves a fixture to each test process (why)
//	forked  {kind: "zygote"|"runner", id, pid}  a child process exists
//	exited  {pid, status, maxrss, utime, stime} a child was reaped (raw wait status, KiB, seconds)
//	fail    {runner, message}                   a runner could not be started (e.g. fork failed)
//	error   {message}                           an internal error; the zygote is exiting
//	handover {test: -1, data}                   what plugins accumulated here (fixture setup
//	                                            coverage, say), for the main process
//
// From a runner (its connection is opened by its zygote before the fork, or by a
// reusable test process before its snapshot, for every runner it will be):
//
//	hello   {role: "runner", id, pid}           pid: the sender's, its zygote's when the zygote
//	                                            opened the connection (the runner's comes with forked)
//	start   {test}                              the runner begins test (its deadline starts)
//	report  {test, data}                        a serialized pytest report
//	warning {test, data}                        a recorded warning
//	handover {test, data}                       what plugins accumulated in this process for
//	                                            the main process (coverage, say): before done
//	await   {test}                              the final test waits to tear its zygotes down
//	await_call {test}                           the test waits for a call turn (Config.CallLimit);
//	                                            again after call_over if it is called again
//	call_over {test}                            its call passed: the turn may go on while it
//	                                            tears down
//	done    {test, maxrss, cpu}                 the test's protocol finished
//	abort   {test, reason, code, interrupt}     the test called pytest.exit() or raised
//	                                            KeyboardInterrupt: the whole run stops
//	rest    {}                                  its batch is over; the process restores itself
//	                                            and keeps this connection for a later runner
//	take    {runner}                            (on a resting connection) the process runs
//	                                            runner now: a hello without a new connection
var schema = wire.Schema{
	"hello":       {"role": wire.String, "id": wire.Int, "pid": wire.Int},
	"ready":       {"id": wire.Int},
	"serial":      {"id": wire.Int, "why": wire.String},
	"per_process": {"id": wire.Int, "why": wire.String},
	"forked":      {"kind": wire.String, "id": wire.Int, "pid": wire.Int},
	"exited":      {"pid": wire.Int, "status": wire.Int, "maxrss": wire.Int, "utime": wire.Number, "stime": wire.Number},
	"fail":        {"runner": wire.Int, "message": wire.String},
	"error":       {"message": wire.String},
	"start":       {"test": wire.Int},
	"report":      {"test": wire.Int, "data": wire.Map},
	"warning":     {"test": wire.Int, "data": wire.Map},
	"handover":    {"test": wire.Int, "data": wire.Map},
	"await":       {"test": wire.Int},
	"await_call":  {"test": wire.Int},
	"call_over":   {"test": wire.Int},
	"done":        {"test": wire.Int, "maxrss": wire.Int, "cpu": wire.Number},
	"abort":       {"test": wire.Int, "reason": wire.String, "code": wire.Int, "interrupt": wire.Bool},
	"rest":        {},
	"take":        {"runner": wire.Int},
}

func asInt(v any) int {
	switch x := v.(type) {
	case int64:
		return int(x)
	case uint64:
		return int(x)
	}
	return 0
}

func asFloat(v any) float64 {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case uint64:
		return float64(x)
	case float64:
		return x
	}
	return 0
}

// Commands the supervisor sends. To a zygote: spawn, run, exit; to a runner: batch,
// exit, go.
type (
	// spawnCmd: fork a child zygote (id, for the scope key) for these tests; final:
	// it is the zygote's last unit, so it tears the zygote's scope down at its end.
	spawnCmd struct {
		T     string `msgpack:"t"`
		ID    int    `msgpack:"id"`
		Key   string `msgpack:"key"`
		Tests []int  `msgpack:"tests"`
		Final bool   `msgpack:"final"`
	}
	// runCmd: start runner for a batch of tests; persistent: it stays for later
	// batches (--tach-isolate none); slot: its worker number (gw<slot>).
	runCmd struct {
		T          string `msgpack:"t"`
		Runner     int    `msgpack:"runner"`
		Tests      []int  `msgpack:"tests"`
		Final      bool   `msgpack:"final"`
		Persistent bool   `msgpack:"persistent"`
		Slot       int    `msgpack:"slot"`
	}
	// batchCmd: a long-lived runner's next batch.
	batchCmd struct {
		T     string `msgpack:"t"`
		Tests []int  `msgpack:"tests"`
		Final bool   `msgpack:"final"`
	}
	// exitCmd: no more work; a zygote with teardown tears its scope down first (the
	// run stopped before its final unit did).
	exitCmd struct {
		T        string `msgpack:"t"`
		Teardown bool   `msgpack:"teardown,omitempty"`
	}
	// goCmd: a waiting runner may go on (through the teardown gate, or into its call).
	goCmd struct {
		T string `msgpack:"t"`
	}
)

// commands lists every command, for Protocol.
var commands = []any{
	spawnCmd{T: "spawn"}, runCmd{T: "run"}, batchCmd{T: "batch"}, exitCmd{T: "exit"}, goCmd{T: "go"},
}

// events lists the fields each event Poll returns may carry (the test event carries
// the last ones only for a test process that ended, was timed out, or measured).
var events = map[string][]string{
	"test": {"t", "idx", "outcome", "reason", "done", "slot", "runner", "frames", "frame_error", "pid",
		"status", "status_text", "signal", "exit_code", "maxrss_kb", "cpu_s", "wall_s", "timeout_s",
		"stopped_s"},
	"abort":    {"t", "test", "reason", "code", "interrupt"},
	"handover": {"t", "frame"},
	"note":     {"t", "msg"},
	"stall":    {"t", "idle_s", "running", "gated", "setting_up", "left"},
	"end":      {"t", "root_status"},
}

// Description is the protocol as data (for the test that holds Python to it).
type Description struct {
	// Frames: what zygotes and runners send, each field's kind (the schema).
	Frames map[string]map[string]string `msgpack:"frames"`
	// Commands: what the supervisor sends them, each command's fields.
	Commands map[string][]string `msgpack:"commands"`
	// Events: what Poll returns to the main process, the fields each may carry.
	Events map[string][]string `msgpack:"events"`
}

// Protocol describes every frame, command and event.
func Protocol() Description {
	d := Description{Frames: map[string]map[string]string{}, Commands: map[string][]string{}, Events: events}
	for name, fields := range schema {
		d.Frames[name] = map[string]string{}
		for f, kind := range fields {
			d.Frames[name][f] = kind.String()
		}
	}
	for _, c := range commands {
		v := reflect.ValueOf(c)
		var fields []string
		for i := 0; i < v.NumField(); i++ {
			fields = append(fields, strings.Split(v.Type().Field(i).Tag.Get("msgpack"), ",")[0])
		}
		d.Commands[v.Field(0).String()] = fields
	}
	return d
}

// encodeFrame encodes a command as one length-prefixed frame.
func encodeFrame(m any) ([]byte, error) {
	p, err := msgpack.Marshal(m)
	if err != nil {
		return nil, err
	}
	return wire.Append(nil, p)
}
