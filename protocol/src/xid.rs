//! XID syntax. The coordinator issues XIDs as `rw-<decimal number>`; the number is what
//! it indexes by. Kept here so the proxy can reject a malformed tag before any
//! round-trip.

/// Prefix of every XID the coordinator issues.
pub const PREFIX: &str = "rw-";

/// Formats the XID for a coordinator-internal transaction number.
pub fn format(n: u64) -> String {
    format!("{PREFIX}{n}")
}

/// Parses an XID string back to its number; `None` if it is not one the coordinator
/// could have issued.
pub fn parse(xid: &str) -> Option<u64> {
    let digits = xid.strip_prefix(PREFIX)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_rejects() {
        assert_eq!(super::parse(&super::format(42)), Some(42));
        assert_eq!(super::parse("rw-"), None);
        assert_eq!(super::parse("rw-+1"), None);
        assert_eq!(super::parse("xx-1"), None);
        assert_eq!(super::parse("rw-99999999999999999999999"), None);
    }
}
