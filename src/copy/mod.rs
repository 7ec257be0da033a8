//! The machinery of `walden copy` (src/commands/copy.rs): which objects a
//! copy takes (`select`) and how they move between two storages
//! (`transfer`: streamed, resumable, server-side where one S3 service
//! holds both).

pub mod select;
pub mod transfer;
