//! Integration tests: the `raftmq` binary that cargo built, run as a real process on free
//! loopback ports with a real RocksDB directory, driven over real TCP by lapin (a RabbitMQ
//! client library) and by raw sockets where a misbehaving client is needed. One binary with
//! one module per behaviour keeps link time down.

mod common;

mod bad_input;
mod basic;
mod bench;
mod cluster;
mod confirms_tx;
mod connection;
mod durability;
mod exchanges;
mod operation;
mod queue_arguments;
mod queues;
mod standby;
