//! The Avro wire format, in one room: the binary encoding's primitives
//! ([`varint`]) that the validator, the decimator, the archive writer, the
//! archive reader and the demo sender all speak.

pub mod varint;

pub use varint::put_long;
