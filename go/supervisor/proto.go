package supervisor

import (
	"github.com/tach-dev/tach/go/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Frames the Python processes send. Every connection starts with hello.
//
//	hello   {role: "zygote"|"test", id, pid}   zygote id, or test index for a test
//	ready   {id}                               zygote id is set up (also after an in-place hand-over)
//	serial  {id, why}                          zygote id holds state its children must not share concurrently
//	forked  {kind: "test"|"zygote", id, pid}   a zygote forked a child
//	exited  {pid, status, maxrss, utime, stime} a zygote reaped a child (raw wait status, KiB, seconds)
//	fail    {test, message}                    a zygote could not start a test (e.g. fork failed)
//	error   {message}                          a zygote hit an internal error and is exiting
//	report  {data}                             a test's serialized pytest report
//	warning {data}                             a test's recorded warning
//	done    {}                                 a test process finished its protocol
var schema = wire.Schema{
	"hello":   {"role": wire.String, "id": wire.Int, "pid": wire.Int},
	"ready":   {"id": wire.Int},
	"serial":  {"id": wire.Int, "why": wire.String},
	"forked":  {"kind": wire.String, "id": wire.Int, "pid": wire.Int},
	"exited":  {"pid": wire.Int, "status": wire.Int, "maxrss": wire.Int, "utime": wire.Number, "stime": wire.Number},
	"fail":    {"test": wire.Int, "message": wire.String},
	"error":   {"message": wire.String},
	"report":  {"data": wire.Map},
	"warning": {"data": wire.Map},
	"done":    {},
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

// encodeFrame encodes a command for a zygote as one length-prefixed frame.
func encodeFrame(m map[string]any) ([]byte, error) {
	p, err := msgpack.Marshal(m)
	if err != nil {
		return nil, err
	}
	return wire.Append(nil, p)
}
