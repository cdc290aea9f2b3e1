// A Go service's view of a server that ends its sessions: database/sql with
// go-sql-driver/mysql and a pool of one connection. Run against MariaDB directly and
// through rewind-proxy (tests/tests/t95_go_driver.rs), it must print the same.
//
//	sessions <dsn> <direct dsn for KILL>
package main

import (
	"database/sql"
	"fmt"
	"os"
	"strings"
	"time"

	_ "github.com/go-sql-driver/mysql"
)

func main() {
	db, err := sql.Open("mysql", os.Args[1])
	if err != nil {
		panic(err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	killer, err := sql.Open("mysql", os.Args[2])
	if err != nil {
		panic(err)
	}
	report := func(what string, err error) {
		if err != nil {
			fmt.Printf("%s: error: %v\n", what, err)
		} else {
			fmt.Printf("%s: ok\n", what)
		}
	}

	// 1. The server ends an idle session after wait_timeout; the pool finds the
	// connection closed and opens another, invisibly.
	_, err = db.Exec("SET @@SESSION.wait_timeout = 2")
	report("set wait_timeout", err)
	time.Sleep(3500 * time.Millisecond)
	tx, err := db.Begin()
	report("begin after wait_timeout", err)
	if err == nil {
		var one int
		report("select in that transaction", tx.QueryRow("SELECT 1").Scan(&one))
		report("rollback", tx.Rollback())
	}

	// 2. An operator kills the idle session.
	var id int64
	report("connection id", db.QueryRow("SELECT CONNECTION_ID()").Scan(&id))
	_, err = killer.Exec(fmt.Sprintf("KILL CONNECTION %d", id))
	report("kill", err)
	time.Sleep(2500 * time.Millisecond)
	var one int
	report("select after kill", db.QueryRow("SELECT 1").Scan(&one))

	// 3. A 16 MiB parameter (max_allowed_packet), sent as long data in the driver's chunks.
	var max int
	report("max_allowed_packet", db.QueryRow("SELECT @@max_allowed_packet").Scan(&max))
	_, err = db.Exec("CREATE TEMPORARY TABLE big (b LONGBLOB)")
	report("create", err)
	_, err = db.Exec("INSERT INTO big VALUES (?)", strings.Repeat("z", max))
	report("insert max_allowed_packet bytes", err)
	var n int
	report("length", db.QueryRow("SELECT LENGTH(b) FROM big").Scan(&n))
	fmt.Printf("stored %d of %d bytes\n", n, max)
}
