//! Where recordings are kept. The filesystem backend is the default; an
//! S3-compatible backend follows.

pub mod events;
pub mod fs;
