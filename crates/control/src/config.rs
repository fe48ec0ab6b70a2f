//! The TOML configuration: parsing, validation with file/line/field errors, stable backend ids.
