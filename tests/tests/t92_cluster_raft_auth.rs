//! Only members talk Raft. On a three-node cluster with a secret, the Raft service on the
//! public gRPC port refuses (permission denied, logged) a message naming no sender, one
//! not signed with the cluster secret, one signed with the secret but from a node that is
//! not a member, and one larger than `cluster.max_message_bytes`; a message a member
//! signs the way members do is answered; and the cluster keeps working throughout.

use std::time::Duration;

use rewind_protocol::v1::raft_client::RaftClient;
use rewind_protocol::v1::RaftPayload;
use rewind_test_support::*;

/// A Raft request as member `from` would send it to member `to` (the coordinator's
/// `cluster::network::RaftAuth`): node id and HMAC-SHA256 over
/// `rewind-raft/1 <from> <to> <method> <payload>`.
fn signed(
    secret: &str,
    from: u64,
    to: u64,
    method: &str,
    json: Vec<u8>,
) -> tonic::Request<RaftPayload> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut input = format!("rewind-raft/1 {from} {to} {method} ").into_bytes();
    input.extend_from_slice(&json);
    let tag: String = ring::hmac::sign(&key, &input)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut req = tonic::Request::new(RaftPayload { json });
    req.metadata_mut()
        .insert("rewind-raft-node", from.to_string().parse().unwrap());
    req.metadata_mut()
        .insert("rewind-raft-mac", tag.parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t92_raft_port_refuses_non_members() {
    let dir = TempDir::new("cluster-raft-auth");
    let config = "tick_ms = 50\n[cluster]\nmax_message_bytes = 4194304\n";
    let (cluster, _) = CoordinatorCluster::start(&dir, config).await;
    let (leader, _) = cluster.leader(Duration::from_secs(20)).await;
    // A follower: member 2 or 3, whichever does not lead.
    let target = if leader == 1 { 2 } else { 1 };
    let (grpc, _) = cluster.addrs[target];
    let to = target as u64 + 1;
    let mut client = RaftClient::connect(format!("http://{grpc}"))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    // A vote request for an ancient term: harmless if it got through.
    let vote =
        br#"{"vote":{"leader_id":{"term":0,"node_id":1},"committed":false},"last_log_id":null}"#
            .to_vec();

    let denied = |r: Result<tonic::Response<RaftPayload>, tonic::Status>, what: &str| {
        let s = r.expect_err(what);
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{what}: {s:?}");
        s.message().to_string()
    };
    let bare = tonic::Request::new(RaftPayload { json: vote.clone() });
    denied(client.vote(bare).await, "no sender");
    let wrong = signed("not-the-cluster-secret", 1, to, "vote", vote.clone());
    let m = denied(client.vote(wrong).await, "wrong secret");
    assert!(m.contains("secret"), "{m}");
    let stranger = signed(&cluster.secret, 7, to, "vote", vote.clone());
    let m = denied(client.vote(stranger).await, "non-member");
    assert!(m.contains("not a member"), "{m}");
    // Signed for another method or another receiver: refused too (no replay across).
    let other_method = signed(&cluster.secret, 1, to, "append_entries", vote.clone());
    denied(client.vote(other_method).await, "signed for append_entries");
    let other_node = signed(&cluster.secret, 1, to % 3 + 1, "vote", vote.clone());
    denied(client.vote(other_node).await, "signed for another member");
    // Too large: refused before it is decoded.
    let big = signed(&cluster.secret, 1, to, "vote", vec![b' '; 5 << 20]);
    let s = client.vote(big).await.expect_err("oversized");
    assert_ne!(s.code(), tonic::Code::Ok);
    // Signed like a member: answered (a Raft answer, not a refusal).
    let member = signed(&cluster.secret, 1, to, "vote", vote.clone());
    let answer = client
        .vote(member)
        .await
        .expect("a member's vote request is answered");
    assert!(!answer.into_inner().json.is_empty());

    let log = std::fs::read_to_string(dir.0.join(format!("node{to}.log"))).unwrap();
    assert!(
        log.contains("refused a Raft message"),
        "refusals are logged"
    );
    // The cluster still works.
    let xid = cluster.begin(10_000).await;
    cluster
        .call("POST", &format!("/api/v1/transactions/{xid}/commit"), None)
        .await;
    assert_eq!(cluster.status(&xid).await, "committed");
}
