//! The proxy's one error type and its one mapping to the wire (`ProxyError::to_mysql`).
//!
//! Backend errors keep the backend's own code, SQLSTATE and message; every error the proxy
//! raises itself is an opensrv [`ErrorKind`], which pairs the code with its SQLSTATE.

use opensrv_mysql::ErrorKind;

/// MySQL 5.7's ER_SECURE_TRANSPORT_REQUIRED and its SQLSTATE: newer than the codes
/// opensrv's `ErrorKind` knows.
const ER_SECURE_TRANSPORT_REQUIRED: (u16, [u8; 5]) = (3159, *b"HY000");

/// Everything that can go wrong while serving one client session.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The backend refused a statement: relayed verbatim.
    #[error("backend error {code} ({state}): {message}")]
    Backend {
        code: u16,
        state: String,
        message: String,
    },
    /// No backend connection could be had (down, refused, timed out, or lost mid-statement).
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    /// Wrong user or password.
    #[error("Access denied for user '{user}'@'{host}' (using password: {using})")]
    AccessDenied {
        user: String,
        host: String,
        using: &'static str,
    },
    /// `max_connections` reached.
    #[error("Too many connections")]
    TooManyConnections,
    /// The client sent bytes that are not a valid packet or command.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Packet sequence ids out of order.
    #[error("Got packets out of order")]
    OutOfOrder,
    /// A packet larger than the proxy's limit.
    #[error("Got a packet bigger than 'max_allowed_packet' bytes")]
    PacketTooLarge,
    /// A command the proxy does not implement.
    #[error("Unknown command {0:#04x}")]
    UnknownCommand(u8),
    /// A prepared statement id the client never got (or closed).
    #[error("Unknown prepared statement handler ({0}) given to mysqld_stmt_execute")]
    UnknownStatement(u32),
    /// Something we chose not to support (yet), named.
    #[error("This version of Rewind doesn't yet support '{0}'")]
    Unsupported(&'static str),
    /// A second statement from a client that did not enable multi-statements.
    #[error("You have an error in your SQL syntax: multi-statements are not enabled for this connection (CLIENT_MULTI_STATEMENTS); check the manual for the right syntax to use near '{0}'")]
    StackedStatement(String),
    /// AT mode cannot undo this statement exactly, so it was not run; the local
    /// transaction is as the client had it.
    #[error("Rewind cannot run this in a global transaction: {0}. Nothing was applied and the local transaction is unchanged; run it outside the global transaction or rewrite it")]
    AtRefused(String),
    /// The tagged XID is malformed, unknown or no longer accepting work.
    #[error("XAER_NOTA: Unknown XID: {0}")]
    UnknownXid(String),
    /// A statement tagged with one XID inside a local transaction bound to another.
    #[error("XAER_INVAL: this local transaction belongs to global transaction {bound}; a statement tagged {tagged} cannot join it (COMMIT or ROLLBACK first)")]
    XidMismatch { bound: String, tagged: String },
    /// A global lock stayed held by another global transaction.
    #[error("Lock wait timeout exceeded; try restarting transaction ({0})")]
    GlobalLockTimeout(String),
    /// Phase one could not finish (or its undo could not be recorded), so the proxy rolled
    /// the local transaction back: nothing of it was committed.
    #[error("XA_RBROLLBACK: Transaction branch was rolled back: {0}")]
    BranchRolledBack(String),
    /// The coordinator did not answer; nothing was applied.
    #[error("Rewind proxy cannot reach the coordinator ({0}); nothing was applied, retry when it is back")]
    CoordinatorUnavailable(String),
    /// An unqualified table name with no current database.
    #[error("No database selected")]
    NoDatabase,
    /// The table a statement names does not exist.
    #[error("Table '{0}' doesn't exist")]
    NoSuchTable(String),
    /// The proxy is shutting down.
    #[error("Server shutdown in progress")]
    Shutdown,
    /// A consumer barrier saw a message its consumer already processed: the local
    /// transaction was rolled back, nothing of it applied.
    #[error("Duplicate message '{message_id}' for consumer '{consumer}': already processed; the local transaction was rolled back and nothing applied (acknowledge the message)")]
    DuplicateMessage {
        consumer: String,
        message_id: String,
    },
    /// The TCC fence saw this phase of the branch done already (a repeated Try, Confirm
    /// or Cancel), or a Cancel with nothing to undo (its Try never committed): the local
    /// transaction was rolled back, nothing of it applied; the participant answers success.
    #[error("TCC phase already done: {what} (branch {branch_id} of global transaction '{xid}'); the local transaction was rolled back and nothing of it applied")]
    TccPhaseDone {
        what: &'static str,
        xid: String,
        branch_id: u64,
    },
    /// A Try that arrived after its branch's Cancel (suspension): refused for good.
    #[error("XAER_NOTA: TCC Try of branch {branch_id} of global transaction '{xid}' arrived after its Cancel and was refused; the local transaction was rolled back and nothing of it applied")]
    TccSuspended { xid: String, branch_id: u64 },
    /// A Cancel (with work of the client's before its tag) met its Try committing
    /// meanwhile: nothing applied; run the Cancel again, it will find the Try.
    #[error("TCC Cancel of branch {branch_id} of global transaction '{xid}' raced its Try committing; the local transaction was rolled back and nothing of it applied: run the Cancel again")]
    TccCancelRaced { xid: String, branch_id: u64 },
    /// The coordinator refused a MSG tag (no such message, already decided, part of a
    /// global transaction, bound to another resource): nothing was applied.
    #[error("XAER_NOTA: {0}; nothing was applied and the local transaction is unchanged")]
    MessageRefused(String),
    /// A MSG tag whose message another transaction already decided (its check row is
    /// committed): the local transaction was rolled back, nothing of it applied.
    #[error("XAER_NOTA: message '{message_id}' {how}")]
    MessageGone {
        message_id: String,
        how: &'static str,
    },
    /// An XA branch was prepared but the coordinator could not be reached to register
    /// it: it stays prepared and follows its global transaction's outcome.
    #[error("XAER_RMERR: {0}")]
    XaInDoubt(String),
    /// A hint in a statement's leading comment that is there but unusable.
    #[error("Incorrect arguments to hint: {0}")]
    BadHint(&'static str),
    /// `require_secure_transport` and a client that logged in without TLS.
    #[error(
        "Connections using insecure transport are prohibited while --require_secure_transport=ON."
    )]
    InsecureTransport,
    /// The configuration cannot work (a missing file, keys that do not go together): the
    /// proxy does not start. Never sent to a client.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Client socket failure: nothing can be sent any more.
    #[error("client i/o: {0}")]
    ClientIo(#[from] std::io::Error),
}

impl ProxyError {
    /// The one mapping from a proxy error to a MySQL error packet's (code, SQLSTATE, message).
    pub fn to_mysql(&self) -> (u16, [u8; 5], String) {
        let own = |kind: ErrorKind, msg: String| (kind as u16, *kind.sqlstate(), msg);
        match self {
            ProxyError::Backend {
                code,
                state,
                message,
            } => {
                let mut st = *b"HY000";
                if state.len() == 5 {
                    st.copy_from_slice(state.as_bytes());
                }
                (*code, st, message.clone())
            }
            ProxyError::BackendUnavailable(why) => own(
                ErrorKind::ER_CONNECT_TO_FOREIGN_DATA_SOURCE,
                format!(
                    "Rewind proxy cannot reach its backend MySQL server ({why}); check that the backend is up and --backend is right, then retry"
                ),
            ),
            e @ ProxyError::AccessDenied { .. } => own(ErrorKind::ER_ACCESS_DENIED_ERROR, e.to_string()),
            e @ ProxyError::TooManyConnections => own(ErrorKind::ER_CON_COUNT_ERROR, e.to_string()),
            e @ ProxyError::Malformed(_) => own(ErrorKind::ER_MALFORMED_PACKET, e.to_string()),
            e @ ProxyError::OutOfOrder => own(ErrorKind::ER_NET_PACKETS_OUT_OF_ORDER, e.to_string()),
            e @ ProxyError::PacketTooLarge => own(ErrorKind::ER_NET_PACKET_TOO_LARGE, e.to_string()),
            e @ ProxyError::UnknownCommand(_) => own(ErrorKind::ER_UNKNOWN_COM_ERROR, e.to_string()),
            e @ ProxyError::UnknownStatement(_) => own(ErrorKind::ER_UNKNOWN_STMT_HANDLER, e.to_string()),
            e @ ProxyError::Unsupported(_) => own(ErrorKind::ER_NOT_SUPPORTED_YET, e.to_string()),
            e @ ProxyError::Shutdown => own(ErrorKind::ER_SERVER_SHUTDOWN, e.to_string()),
            e @ ProxyError::StackedStatement(_) => own(ErrorKind::ER_PARSE_ERROR, e.to_string()),
            e @ ProxyError::AtRefused(_) => own(ErrorKind::ER_NOT_SUPPORTED_YET, e.to_string()),
            e @ ProxyError::UnknownXid(_) => own(ErrorKind::ER_XAER_NOTA, e.to_string()),
            e @ ProxyError::XidMismatch { .. } => own(ErrorKind::ER_XAER_INVAL, e.to_string()),
            e @ ProxyError::GlobalLockTimeout(_) => own(ErrorKind::ER_LOCK_WAIT_TIMEOUT, e.to_string()),
            e @ ProxyError::BranchRolledBack(_) => own(ErrorKind::ER_XA_RBROLLBACK, e.to_string()),
            e @ ProxyError::CoordinatorUnavailable(_) => own(ErrorKind::ER_CONNECT_TO_FOREIGN_DATA_SOURCE, e.to_string()),
            e @ ProxyError::NoDatabase => own(ErrorKind::ER_NO_DB_ERROR, e.to_string()),
            e @ ProxyError::NoSuchTable(_) => own(ErrorKind::ER_NO_SUCH_TABLE, e.to_string()),
            e @ ProxyError::DuplicateMessage { .. } => own(ErrorKind::ER_DUP_ENTRY, e.to_string()),
            e @ ProxyError::TccPhaseDone { .. } => own(ErrorKind::ER_DUP_ENTRY, e.to_string()),
            e @ ProxyError::TccSuspended { .. } => own(ErrorKind::ER_XAER_NOTA, e.to_string()),
            e @ ProxyError::TccCancelRaced { .. } => own(ErrorKind::ER_LOCK_WAIT_TIMEOUT, e.to_string()),
            e @ ProxyError::MessageRefused(_) => own(ErrorKind::ER_XAER_NOTA, e.to_string()),
            e @ ProxyError::MessageGone { .. } => own(ErrorKind::ER_XAER_NOTA, e.to_string()),
            e @ ProxyError::BadHint(_) => own(ErrorKind::ER_WRONG_ARGUMENTS, e.to_string()),
            e @ ProxyError::XaInDoubt(_) => own(ErrorKind::ER_XAER_RMERR, e.to_string()),
            e @ ProxyError::InsecureTransport => {
                let (code, state) = ER_SECURE_TRANSPORT_REQUIRED;
                (code, state, e.to_string())
            }
            e @ ProxyError::Config(_) => own(ErrorKind::ER_UNKNOWN_ERROR, e.to_string()),
            e @ ProxyError::ClientIo(_) => own(ErrorKind::ER_NET_READ_ERROR, e.to_string()),
        }
    }

    /// Whether the session can go on after this error was sent (backend/statement errors) or
    /// must close (the stream is out of sync or gone).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ProxyError::BackendUnavailable(_)
                | ProxyError::OutOfOrder
                | ProxyError::PacketTooLarge
                | ProxyError::ClientIo(_)
                | ProxyError::Shutdown
                | ProxyError::TooManyConnections
                | ProxyError::AccessDenied { .. }
                | ProxyError::InsecureTransport
                | ProxyError::Config(_)
        )
    }
}

impl From<mysql_async::Error> for ProxyError {
    fn from(e: mysql_async::Error) -> Self {
        match e {
            mysql_async::Error::Server(s) => ProxyError::Backend {
                code: s.code,
                state: s.state,
                message: s.message,
            },
            // The query is bigger than the backend's max_allowed_packet: mysql_async refuses
            // it before sending, as the server would (and, like the server, the session ends).
            mysql_async::Error::Io(mysql_async::IoError::Io(ref io)) if is_packet_too_large(io) => {
                ProxyError::PacketTooLarge
            }
            // The backend asked for a local file: the proxy never offers LOCAL INFILE, and
            // the backend connection now waits for file data, so the session ends.
            mysql_async::Error::Driver(mysql_async::DriverError::LocalInfile(_)) => {
                ProxyError::Unsupported("LOAD DATA LOCAL INFILE")
            }
            other => ProxyError::BackendUnavailable(other.to_string()),
        }
    }
}

fn is_packet_too_large(e: &std::io::Error) -> bool {
    use mysql_common::proto::codec::error::PacketCodecError;
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<PacketCodecError>()),
        Some(PacketCodecError::PacketTooLarge)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_are_relayed_verbatim() {
        let e = ProxyError::Backend {
            code: 1146,
            state: "42S02".into(),
            message: "Table 'x.y' doesn't exist".into(),
        };
        assert_eq!(
            e.to_mysql(),
            (1146, *b"42S02", "Table 'x.y' doesn't exist".into())
        );
    }

    #[test]
    fn own_errors_pair_code_and_sqlstate() {
        let (code, state, _) = ProxyError::AccessDenied {
            user: "u".into(),
            host: "h".into(),
            using: "YES",
        }
        .to_mysql();
        assert_eq!((code, &state), (1045, b"28000"));
        assert_eq!(ProxyError::TooManyConnections.to_mysql().0, 1040);
        let (code, state, msg) = ProxyError::InsecureTransport.to_mysql();
        assert_eq!((code, &state), (3159, b"HY000"));
        assert_eq!(
            msg,
            "Connections using insecure transport are prohibited while --require_secure_transport=ON."
        );
    }

    #[test]
    fn tcc_fence_refusals_are_the_codes_participants_handle() {
        let (xid, branch_id) = ("rw-1".to_string(), 3);
        let (code, state, msg) = ProxyError::TccPhaseDone {
            what: "repeated confirm",
            xid: xid.clone(),
            branch_id,
        }
        .to_mysql();
        assert_eq!((code, &state), (1062, b"23000"));
        assert!(
            msg.starts_with("TCC phase already done: repeated confirm"),
            "{msg}"
        );
        let (code, state, _) = ProxyError::TccSuspended {
            xid: xid.clone(),
            branch_id,
        }
        .to_mysql();
        assert_eq!((code, &state), (1397, b"XAE04"));
        let (code, _, _) = ProxyError::TccCancelRaced { xid, branch_id }.to_mysql();
        assert_eq!(code, 1205);
    }

    #[test]
    fn half_message_refusals_are_xaer_nota() {
        let (code, state, msg) =
            ProxyError::MessageRefused("message m is cancelled".into()).to_mysql();
        assert_eq!((code, &state), (1397, b"XAE04"));
        assert!(
            msg.starts_with("XAER_NOTA: message m is cancelled"),
            "{msg}"
        );
        let (code, _, msg) = ProxyError::MessageGone {
            message_id: "m".into(),
            how: "was already committed by another local transaction",
        }
        .to_mysql();
        assert_eq!(code, 1397);
        assert_eq!(
            msg,
            "XAER_NOTA: message 'm' was already committed by another local transaction"
        );
    }
}
