//! Where the lowering passes (`check`, `exposition`, `migrations`, `deploy`) send what they
//! find, and where they say which YAML each configuration field came from.

use serde_saphyr::Location;

pub trait Report {
    fn error(&mut self, at: &Location, message: String);
    fn warn(&mut self, at: &Location, message: String);
    /// The configuration field `path` (e.g. `labels[2].name`) was lowered from `at`: the
    /// validator's errors about it are reported there.
    fn origin(&mut self, path: String, at: &Location);
    /// The YAML `path` was lowered from was refused already: the validator's errors about the
    /// field (or under it) would only repeat that.
    fn refused(&mut self, path: String);
}
