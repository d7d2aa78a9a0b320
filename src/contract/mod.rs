//! Contracts: the YAML people edit (`model`), loading it with positions (`load`), checking it
//! (`check`) and compiling it to the filter's plugin configuration (`compile`); route rules from
//! an OpenAPI document (`openapi`). Native-only.

pub mod check;
pub mod compile;
pub mod crosscheck;
pub mod deploy;
pub mod diff;
pub mod verify;
pub mod exposition;
pub mod findings;
pub mod load;
pub mod migrations;
pub mod model;
pub mod openapi;
pub mod policy;
pub mod report;
pub mod shape;
pub mod sources;
pub mod suggest;
pub mod yaml;
