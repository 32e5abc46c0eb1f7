//! Kubernetes client-side pieces: reaching an API server, identities, request
//! classification, and the YAML subset kubeconfigs use.

pub mod auth;
pub mod client;
pub mod recorders;
pub mod request_info;
pub mod rest;
pub mod yaml;
