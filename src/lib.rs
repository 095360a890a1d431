//! connector-operator: manages SAP Open Connectors connector instances declaratively.

pub mod api;
pub mod cli;
pub mod controller;
pub mod http;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod oauth;
pub mod platform;
pub mod sim;
