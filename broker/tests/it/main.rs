//! rewind-broker against the real brokers: RabbitMQ (`REWIND_TEST_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f) and NATS with JetStream (`REWIND_TEST_NATS_URL`,
//! default nats://127.0.0.1:4222), as `scripts/ensure-brokers.sh` provides them.
//!
//! Every test names its queue, routing key, stream and subject after itself and a random
//! suffix, so tests and parallel runs share the brokers without seeing each other.

mod amqp;
mod cut;
mod nats;
mod support;
