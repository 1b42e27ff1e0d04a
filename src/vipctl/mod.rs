//! `vipctl`: the operator's view of vipd.
//!
//! - [`report`]: gathers the cluster-wide picture and judges it;
//! - [`render`]: prints it as kubectl-like tables;
//! - [`http`]: reads an instance's `/status`.

pub mod http;
pub mod render;
pub mod report;
