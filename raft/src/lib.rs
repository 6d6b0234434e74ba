pub use openraft;
pub use rocksdb;
