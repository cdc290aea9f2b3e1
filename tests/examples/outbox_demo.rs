//! The outbox and barrier part of `scripts/demo.sh`, through a running proxy (whose relay
//! publishes to RabbitMQ): an order is written with its event in one local transaction,
//! the event arrives on a queue bound to `amq.topic`, a consumer applies it behind its
//! BARRIER, the broker delivers it again, and the duplicate is refused (1062) and only
//! acknowledged. Every statement is printed as it runs.
//!
//! `outbox_demo <proxy host:port> [database]`; the broker comes from
//! `REWIND_TEST_AMQP_URL` (default: RabbitMQ on 127.0.0.1:5672, guest/guest).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use rewind_test_support::AmqpQueue;

async fn run(c: &mut Conn, sql: &str) -> Result<(), mysql_async::Error> {
    println!("  sql> {sql}");
    let r = c.query_drop(sql).await;
    if let Err(e) = &r {
        println!("       -> {e}");
    }
    r
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let proxy = args.next().unwrap_or_else(|| "127.0.0.1:3307".into());
    let db = args.next().unwrap_or_else(|| "rewind_demo_shop".into());
    let (host, port) = proxy.rsplit_once(':').ok_or("proxy address is host:port")?;
    let opts = OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port.parse()?)
        .user(Some("root"))
        .db_name(Some(db.clone()))
        .prefer_socket(false);
    let mut shop = Conn::new(opts.clone()).await?;
    let mut billing = Conn::new(opts).await?;
    let mut queue = AmqpQueue::bind(&["shop.order.#"]).await;
    println!("(queue {} bound to amq.topic for shop.order.#)", queue.name);

    println!("the shop writes an order and its event in one local transaction:");
    run(
        &mut shop,
        "CREATE TABLE IF NOT EXISTS invoices (order_id INT PRIMARY KEY, amount DECIMAL(12,2))",
    )
    .await?;
    run(&mut shop, "BEGIN").await?;
    run(&mut shop, "INSERT INTO orders VALUES (3, 'pen', 2.50)").await?;
    run(
        &mut shop,
        "INSERT INTO rewind.outbox (topic, msg_key, payload, headers) VALUES \
         ('shop.order.created', '3', '{\"order\":3,\"amount\":2.50}', '{\"source\":\"shop\"}')",
    )
    .await?;
    run(&mut shop, "COMMIT").await?;

    let first = queue
        .next(Duration::from_secs(10))
        .await
        .ok_or("the event did not arrive within 10 s (is the proxy's --outbox-broker set?)")?;
    println!(
        "RabbitMQ delivered {} message_id={} payload={} headers={:?}",
        first.routing_key,
        first.message_id,
        first.text(),
        first.headers
    );
    let apply = format!(
        "/*+ BARRIER('billing', '{}') */ INSERT INTO invoices VALUES (3, 2.50)",
        first.message_id
    );
    println!("billing applies it behind its barrier:");
    run(&mut billing, "BEGIN").await?;
    run(&mut billing, &apply).await?;
    run(&mut billing, "COMMIT").await?;
    // As if billing crashed before its ack: the broker delivers the message again.
    first.requeue().await;
    let again = queue
        .next(Duration::from_secs(10))
        .await
        .ok_or("no redelivery")?;
    println!(
        "RabbitMQ delivered it again (redelivered={}, message_id={}):",
        again.redelivered, again.message_id
    );
    run(&mut billing, "BEGIN").await?;
    match run(&mut billing, &apply).await {
        Err(mysql_async::Error::Server(e)) if e.code == 1062 => {
            println!("billing sees the duplicate, applies nothing and acknowledges it");
            again.ack().await;
        }
        Err(e) => return Err(e.into()),
        Ok(()) => return Err("the duplicate was applied".into()),
    }
    let n: Option<i64> = billing
        .query_first("SELECT COUNT(*) FROM invoices WHERE order_id = 3")
        .await?;
    println!("invoices for order 3: {}", n.unwrap_or(0));
    shop.disconnect().await?;
    billing.disconnect().await?;
    Ok(())
}
