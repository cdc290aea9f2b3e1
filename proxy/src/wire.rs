//! Encoding of the server's response packets: OK, EOF, ERR and column definitions,
//! honouring the client's CLIENT_DEPRECATE_EOF. Rows are relayed as the backend sent them
//! (`Session::relay`).

use mysql_async::consts::{CapabilityFlags, StatusFlags};
use mysql_async::Column;

use crate::error::ProxyError;
use crate::packet::{put_lenenc_bytes, put_lenenc_int};

/// What the backend's OK packet said, to be relayed field for field.
#[derive(Debug, Clone, Default)]
pub struct Ok {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    pub info: Vec<u8>,
}

impl Ok {
    pub fn from_backend(conn: &mysql_async::Conn) -> Ok {
        match conn.last_ok_packet() {
            Some(p) => Ok {
                affected_rows: p.affected_rows(),
                last_insert_id: p.last_insert_id().unwrap_or(0),
                status: p.status_flags().bits(),
                warnings: p.warnings(),
                info: p.info_ref().map(<[u8]>::to_vec).unwrap_or_default(),
            },
            None => Ok {
                status: StatusFlags::SERVER_STATUS_AUTOCOMMIT.bits(),
                ..Ok::default()
            },
        }
    }
}

/// Whether the backend's last answer left its session inside a transaction (no OK packet
/// read yet: not).
pub fn in_transaction(conn: &mysql_async::Conn) -> bool {
    conn.last_ok_packet().is_some_and(|ok| {
        ok.status_flags()
            .contains(StatusFlags::SERVER_STATUS_IN_TRANS)
    })
}

pub fn ok_packet(ok: &Ok) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + ok.info.len());
    b.push(0x00);
    put_lenenc_int(&mut b, ok.affected_rows);
    put_lenenc_int(&mut b, ok.last_insert_id);
    b.extend_from_slice(&ok.status.to_le_bytes());
    b.extend_from_slice(&ok.warnings.to_le_bytes());
    // Servers send the info length-encoded (net_store_data) and clients read it so, even
    // without CLIENT_SESSION_TRACK.
    if !ok.info.is_empty() {
        put_lenenc_bytes(&mut b, &ok.info);
    }
    b
}

/// End of a result set (or of column definitions): an EOF packet, or with
/// CLIENT_DEPRECATE_EOF an OK packet with the 0xFE header.
pub fn eof_packet(caps: CapabilityFlags, status: u16, warnings: u16) -> Vec<u8> {
    if caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF) {
        let mut b = vec![0xFE, 0, 0];
        b.extend_from_slice(&status.to_le_bytes());
        b.extend_from_slice(&warnings.to_le_bytes());
        b
    } else {
        legacy_eof(status, warnings)
    }
}

/// A real EOF packet (column-definition terminators without DEPRECATE_EOF, COM_SET_OPTION).
pub fn legacy_eof(status: u16, warnings: u16) -> Vec<u8> {
    let mut b = vec![0xFE];
    b.extend_from_slice(&warnings.to_le_bytes());
    b.extend_from_slice(&status.to_le_bytes());
    b
}

pub fn err_packet(e: &ProxyError) -> Vec<u8> {
    let (code, state, msg) = e.to_mysql();
    let mut b = Vec::with_capacity(9 + msg.len());
    b.push(0xFF);
    b.extend_from_slice(&code.to_le_bytes());
    b.push(b'#');
    b.extend_from_slice(&state);
    b.extend_from_slice(msg.as_bytes());
    b
}

/// An ERR packet sent before the client said it speaks protocol 4.1 (in place of the
/// greeting): no SQLSTATE marker, as MySQL sends it.
pub fn err_packet_before_handshake(e: &ProxyError) -> Vec<u8> {
    let (code, _, msg) = e.to_mysql();
    let mut b = Vec::with_capacity(3 + msg.len());
    b.push(0xFF);
    b.extend_from_slice(&code.to_le_bytes());
    b.extend_from_slice(msg.as_bytes());
    b
}

/// Column definition (Protocol::ColumnDefinition41) with the backend's own metadata.
pub fn column_def(c: &Column) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    put_lenenc_bytes(&mut b, b"def");
    put_lenenc_bytes(&mut b, c.schema_ref());
    put_lenenc_bytes(&mut b, c.table_ref());
    put_lenenc_bytes(&mut b, c.org_table_ref());
    put_lenenc_bytes(&mut b, c.name_ref());
    put_lenenc_bytes(&mut b, c.org_name_ref());
    b.push(0x0C);
    b.extend_from_slice(&c.character_set().to_le_bytes());
    b.extend_from_slice(&c.column_length().to_le_bytes());
    b.push(c.column_type() as u8);
    b.extend_from_slice(&c.flags().bits().to_le_bytes());
    b.push(c.decimals());
    b.extend_from_slice(&[0, 0]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_packet_layout() {
        let b = ok_packet(&Ok {
            affected_rows: 3,
            last_insert_id: 300,
            status: 0x0003,
            warnings: 1,
            info: b"Rows matched: 3".to_vec(),
        });
        assert_eq!(&b[..10], &[0x00, 3, 0xFC, 44, 1, 0x03, 0x00, 1, 0, 15]);
        assert!(b.ends_with(b"Rows matched: 3"));
    }

    #[test]
    fn eof_depends_on_deprecate_eof() {
        assert_eq!(
            eof_packet(CapabilityFlags::empty(), 2, 0),
            vec![0xFE, 0, 0, 2, 0]
        );
        assert_eq!(
            eof_packet(CapabilityFlags::CLIENT_DEPRECATE_EOF, 2, 0),
            vec![0xFE, 0, 0, 2, 0, 0, 0]
        );
    }
}
