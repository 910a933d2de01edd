package supervisor

import (
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
//	hello   {role: "runner", id, pid}
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

// encodeFrame encodes a command as one length-prefixed frame.
func encodeFrame(m map[string]any) ([]byte, error) {
	p, err := msgpack.Marshal(m)
	if err != nil {
		return nil, err
	}
	return wire.Append(nil, p)
}
