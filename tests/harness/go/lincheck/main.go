// lincheck: checks a kvs2 history for linearizability with porcupine.
//
// Input (stdin): a JSON array of operations, each
//
//	{"client": 3, "op": "put"|"cas"|"del"|"cas_del"|"get", "key": "k", "value": "v", "expected": 0,
//	 "call": <ns>, "return": <ns>, "applied": true, "found": true, "out_value": "v", "revision": 7,
//	 "ambiguous": false}
//
// The sequential model is a map of registers, one per key (porcupine checks each key on its own):
// a register holds (found, value, revision). Revisions are assigned by the system (Kafka offset + 1), so
// the model requires that every write's revision is larger than any earlier write's (deletes included:
// `floor`), and that reads and refused compare-and-sets report the register exactly.
//
// Ambiguous writes (the call timed out or met UNAVAILABLE: it may or may not have been applied) come with
// a return time after every other operation, as in Jepsen: porcupine may linearize them anywhere after
// their call, including "after everything", which is the same as never. Their revision is unknown, so the
// register's revision becomes unknown (`unknown`) until a read or a refused compare-and-set reports it.
// Output: "ok" and exit 0, "violation" and exit 1, "unknown" (timed out) and exit 2.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/anishathalye/porcupine"
)

type op struct {
	Client    int    `json:"client"`
	Op        string `json:"op"`
	Key       string `json:"key"`
	Value     string `json:"value"`
	Expected  int64  `json:"expected"`
	Call      int64  `json:"call"`
	Return    int64  `json:"return"`
	Applied   bool   `json:"applied"`
	Found     bool   `json:"found"`
	OutValue  string `json:"out_value"`
	Revision  int64  `json:"revision"`
	Ambiguous bool   `json:"ambiguous"`
}

type register struct {
	Found    bool
	Value    string
	Revision int64
	Unknown  bool  // Found, but the revision was assigned by an ambiguous write and never reported
	Floor    int64 // the highest revision any write so far is known to have had
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// revisionMatches: a reported revision is the register's, or, when that is unknown, one it could be.
func revisionMatches(s register, rev int64) bool {
	if s.Unknown {
		return rev > s.Floor
	}
	return rev == s.Revision
}

// pinned: the register after something reported its revision.
func pinned(s register, rev int64) register {
	if s.Unknown && s.Found {
		return register{Found: true, Value: s.Value, Revision: rev, Floor: max64(s.Floor, rev)}
	}
	return s
}

func written(s register, in op, out op) (bool, interface{}) {
	// A definite write: its revision must be above every earlier write's.
	if out.Revision <= s.Floor || (s.Found && !s.Unknown && out.Revision <= s.Revision) {
		return false, s
	}
	if in.Op == "del" || in.Op == "cas_del" {
		return true, register{Floor: out.Revision}
	}
	return true, register{Found: true, Value: in.Value, Revision: out.Revision, Floor: out.Revision}
}

func ambiguouslyWritten(s register, in op) register {
	if in.Op == "del" || in.Op == "cas_del" {
		return register{Floor: s.Floor}
	}
	return register{Found: true, Value: in.Value, Unknown: true, Floor: s.Floor}
}

// holds: the condition of a compare-and-set against the register (nil: cannot tell, revision unknown).
func holds(s register, expected int64) *bool {
	t, f := true, false
	if !s.Found {
		if expected == 0 {
			return &t
		}
		return &f
	}
	if s.Unknown {
		if expected == 0 || expected <= s.Floor {
			return &f
		}
		return nil
	}
	if expected == s.Revision {
		return &t
	}
	return &f
}

func step(state, input, output interface{}) (bool, interface{}) {
	s := state.(register)
	in := input.(op)
	out := output.(op)
	switch in.Op {
	case "get":
		if out.Found != s.Found {
			return false, s
		}
		if !out.Found {
			return true, s
		}
		if out.OutValue != s.Value || !revisionMatches(s, out.Revision) {
			return false, s
		}
		return true, pinned(s, out.Revision)
	case "put", "del":
		if in.Ambiguous {
			return true, ambiguouslyWritten(s, in)
		}
		return written(s, in, out)
	case "cas", "cas_del":
		cond := holds(s, in.Expected)
		if in.Ambiguous {
			// applied if the condition held at its point, refused otherwise; both change nothing observable
			// when it never reached Kafka, which porcupine covers by placing it last.
			if cond != nil && !*cond {
				return true, s
			}
			return true, ambiguouslyWritten(s, in)
		}
		if !out.Applied {
			// refused: only legal if the condition did not hold, reporting the current revision
			if cond != nil && *cond {
				return false, s
			}
			if !s.Found {
				return out.Revision == 0, s
			}
			if !revisionMatches(s, out.Revision) || in.Expected == out.Revision {
				return false, s
			}
			return true, pinned(s, out.Revision)
		}
		if cond != nil && !*cond {
			return false, s
		}
		if cond == nil && in.Expected <= s.Floor {
			return false, s
		}
		return written(s, in, out)
	}
	return false, s
}

func main() {
	var ops []op
	if err := json.NewDecoder(os.Stdin).Decode(&ops); err != nil {
		fmt.Fprintln(os.Stderr, "lincheck: bad input:", err)
		os.Exit(3)
	}
	history := make([]porcupine.Operation, 0, len(ops))
	for _, o := range ops {
		history = append(history, porcupine.Operation{
			ClientId: o.Client, Input: o, Call: o.Call, Output: o, Return: o.Return,
		})
	}
	model := porcupine.Model{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			for _, o := range h {
				k := o.Input.(op).Key
				byKey[k] = append(byKey[k], o)
			}
			parts := make([][]porcupine.Operation, 0, len(byKey))
			for _, p := range byKey {
				parts = append(parts, p)
			}
			return parts
		},
		Init:  func() interface{} { return register{} },
		Step:  step,
		Equal: func(a, b interface{}) bool { return a.(register) == b.(register) },
		DescribeOperation: func(input, output interface{}) string {
			in, out := input.(op), output.(op)
			return fmt.Sprintf("%s(%s %q if=%d ambiguous=%v) -> applied=%v found=%v %q rev=%d",
				in.Op, in.Key, in.Value, in.Expected, in.Ambiguous, out.Applied, out.Found, out.OutValue,
				out.Revision)
		},
	}
	switch porcupine.CheckOperationsTimeout(model, history, 60*time.Second) {
	case porcupine.Ok:
		fmt.Println("ok")
	case porcupine.Illegal:
		fmt.Println("violation")
		os.Exit(1)
	default:
		fmt.Println("unknown")
		os.Exit(2)
	}
}
