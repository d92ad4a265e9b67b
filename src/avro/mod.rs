//! The Avro wire format, in one room: the binary encoding's primitives
//! (`varint`), the Object Container File's framing (`container`: magic,
//! header, sync marker, blocks) and the block codecs ([`codec`]). The
//! validator, the decimator, the archive writer, the archive reader
//! (`verify`) and the demo sender all speak Avro through here.

pub mod codec;
pub(crate) mod container;
pub(crate) mod varint;

pub(crate) use varint::put_long;
