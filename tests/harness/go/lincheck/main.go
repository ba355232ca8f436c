// lincheck: checks a kvs2 history for linearizability with porcupine.
//
// Input (stdin): a JSON array of operations, each
//   {"client": 3, "op": "put"|"cas"|"get", "key": "k", "value": "v", "expected": 0,
//    "call": <ns>, "return": <ns>, "applied": true, "found": true, "out_value": "v", "revision": 7}
// The sequential model is a map of registers, one per key (porcupine checks each key on its own):
// a register holds (found, value, revision). Revisions are assigned by the system, so the model only
// requires that a write's revision is larger than the one it replaces, and that reads and failed
// compare-and-sets report the register exactly.
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
	Client   int    `json:"client"`
	Op       string `json:"op"`
	Key      string `json:"key"`
	Value    string `json:"value"`
	Expected int64  `json:"expected"`
	Call     int64  `json:"call"`
	Return   int64  `json:"return"`
	Applied  bool   `json:"applied"`
	Found    bool   `json:"found"`
	OutValue string `json:"out_value"`
	Revision int64  `json:"revision"`
}

type register struct {
	Found    bool
	Value    string
	Revision int64
}

func step(state, input, output interface{}) (bool, interface{}) {
	s := state.(register)
	in := input.(op)
	out := output.(op)
	switch in.Op {
	case "get":
		return out.Found == s.Found && out.OutValue == s.Value && out.Revision == s.Revision, s
	case "put":
		if out.Revision <= s.Revision {
			return false, s
		}
		return true, register{Found: true, Value: in.Value, Revision: out.Revision}
	case "cas":
		if !out.Applied {
			// refused: only legal if the condition did not hold, reporting the current revision
			return in.Expected != s.Revision && out.Revision == s.Revision, s
		}
		if in.Expected != s.Revision || out.Revision <= s.Revision {
			return false, s
		}
		return true, register{Found: true, Value: in.Value, Revision: out.Revision}
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
			return fmt.Sprintf("%s(%s %q if=%d) -> applied=%v found=%v %q rev=%d",
				in.Op, in.Key, in.Value, in.Expected, out.Applied, out.Found, out.OutValue, out.Revision)
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
