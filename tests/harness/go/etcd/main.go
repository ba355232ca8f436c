// Template copied by tests/harness/gobuild.py into a throw-away module that requires
// go.etcd.io/etcd/server/v3: that module has no main package of its own (the release binary's main lives in
// etcd's repository root module, which is not meant to be required), so this calls the same entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
