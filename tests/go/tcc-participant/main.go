// An example TCC participant: a small HTTP service that freezes money in Try, spends
// it in Confirm and gives it back in Cancel, with database/sql and go-sql-driver/mysql
// through rewind-proxy. Its only TCC code is a comment on the first statement of each
// local transaction, and the meaning of three MySQL error codes:
//
//	1062 "TCC phase already done…"  repeated Confirm/Cancel/Try, or a Cancel whose Try
//	                                never ran: nothing was applied; answer success.
//	1397 (XAER_NOTA)                a Try that arrived after its Cancel: refused, nothing
//	                                applied; answer failure.
//	anything else                   answer failure; the coordinator calls again.
//
// The initiator registers the branch with the coordinator, then calls /try with
// {"xid", "branch_id", "account", "amount"}; the coordinator calls /confirm or /cancel
// with {"xid", "branch_id", "action", "payload": {"account", "amount"}}.
//
//	tcc-participant -listen 127.0.0.1:9000 -dsn 'root@tcp(127.0.0.1:3307)/bank'
//
// Test knobs (not for production): POST /admin/fail?on=1 makes Confirm and Cancel
// answer 503 until /admin/fail?on=0; POST /admin/delay?ms=N makes them wait N ms first.
// -fence=false leaves the TCC comment out (for the benchmark's comparison only).
package main

import (
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
)

type request struct {
	Xid      string   `json:"xid"`
	BranchID uint64   `json:"branch_id"`
	Account  int64    `json:"account"`
	Amount   int64    `json:"amount"`
	Payload  *payload `json:"payload"`
}

type payload struct {
	Account int64 `json:"account"`
	Amount  int64 `json:"amount"`
}

var (
	db      *sql.DB
	fence   = flag.Bool("fence", true, "tag statements with the TCC fence hint")
	failing atomic.Bool
	delayMs atomic.Int64
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9000", "address to serve on")
	dsn := flag.String("dsn", "root@tcp(127.0.0.1:3307)/test", "database, through rewind-proxy")
	flag.Parse()
	var err error
	db, err = sql.Open("mysql", *dsn)
	if err != nil {
		log.Fatal(err)
	}
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS tcc_account (
		id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, frozen BIGINT NOT NULL DEFAULT 0)`); err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("/try", handle("try", tryPhase))
	http.HandleFunc("/confirm", handle("confirm", confirmPhase))
	http.HandleFunc("/cancel", handle("cancel", cancelPhase))
	http.HandleFunc("/admin/fail", func(w http.ResponseWriter, r *http.Request) {
		failing.Store(r.URL.Query().Get("on") == "1")
	})
	http.HandleFunc("/admin/delay", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.ParseInt(r.URL.Query().Get("ms"), 10, 64)
		delayMs.Store(ms)
	})
	log.Printf("listening on %s", *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}

// errRefused: the business rule said no (insufficient funds); answered 409.
var errRefused = errors.New("refused")

func handle(phase string, run func(*sql.Tx, request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req request
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Xid == "" {
			http.Error(w, "body must be JSON with xid and branch_id", http.StatusBadRequest)
			return
		}
		if req.Payload != nil {
			req.Account, req.Amount = req.Payload.Account, req.Payload.Amount
		}
		if phase != "try" {
			if ms := delayMs.Load(); ms > 0 {
				time.Sleep(time.Duration(ms) * time.Millisecond)
			}
			if failing.Load() {
				http.Error(w, "failing on purpose (/admin/fail)", http.StatusServiceUnavailable)
				return
			}
		}
		status, msg := local(phase, run, req)
		w.WriteHeader(status)
		fmt.Fprintln(w, msg)
	}
}

// local runs one phase's local transaction and maps its outcome to an HTTP answer.
func local(phase string, run func(*sql.Tx, request) error, req request) (int, string) {
	tx, err := db.Begin()
	if err != nil {
		return http.StatusServiceUnavailable, err.Error()
	}
	err = run(tx, req)
	if err == nil {
		err = tx.Commit()
	} else {
		tx.Rollback()
	}
	var my *mysql.MySQLError
	switch {
	case err == nil:
		return http.StatusOK, phase + " done"
	case errors.As(err, &my) && my.Number == 1062:
		// Repeated, or a Cancel with no Try to undo: nothing to do, and that is success.
		return http.StatusOK, my.Message
	case errors.As(err, &my) && my.Number == 1397:
		// A Try after its Cancel: refused for good.
		return http.StatusConflict, my.Message
	case errors.Is(err, errRefused):
		return http.StatusConflict, "insufficient funds"
	default:
		return http.StatusInternalServerError, err.Error()
	}
}

func hint(req request, phase string) string {
	if !*fence {
		return ""
	}
	return fmt.Sprintf("/*+ TCC('%s', %d, '%s') */ ", req.Xid, req.BranchID, phase)
}

func tryPhase(tx *sql.Tx, req request) error {
	r, err := tx.Exec(hint(req, "try")+
		"UPDATE tcc_account SET balance = balance - ?, frozen = frozen + ? WHERE id = ? AND balance >= ?",
		req.Amount, req.Amount, req.Account, req.Amount)
	if err != nil {
		return err
	}
	if n, _ := r.RowsAffected(); n != 1 {
		return errRefused
	}
	return nil
}

func confirmPhase(tx *sql.Tx, req request) error {
	_, err := tx.Exec(hint(req, "confirm")+
		"UPDATE tcc_account SET frozen = frozen - ? WHERE id = ?", req.Amount, req.Account)
	return err
}

func cancelPhase(tx *sql.Tx, req request) error {
	_, err := tx.Exec(hint(req, "cancel")+
		"UPDATE tcc_account SET balance = balance + ?, frozen = frozen - ? WHERE id = ?",
		req.Amount, req.Amount, req.Account)
	return err
}
