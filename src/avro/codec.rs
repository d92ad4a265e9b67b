//! The block codecs: the `avro.codec` names speedrelay writes and reads,
//! and compressing or decompressing one block's data (apache-avro does the
//! work).

use std::borrow::Cow;

use super::container::MAX_BLOCK_BYTES;
use crate::config::Codec;

/// Every codec speedrelay writes, hence reads.
const CODECS: [Codec; 4] = [Codec::Null, Codec::Deflate, Codec::Snappy, Codec::Zstandard];

/// apache-avro's codec for our setting (it does the compression).
pub fn avro_codec(codec: Codec) -> apache_avro::Codec {
    match codec {
        Codec::Null => apache_avro::Codec::Null,
        Codec::Deflate => apache_avro::Codec::Deflate(apache_avro::DeflateSettings::default()),
        Codec::Zstandard => {
            apache_avro::Codec::Zstandard(apache_avro::ZstandardSettings::default())
        }
        Codec::Snappy => apache_avro::Codec::Snappy,
    }
}

/// The codec an `avro.codec` header value names, if speedrelay reads it.
pub(crate) fn from_name(name: &str) -> Option<apache_avro::Codec> {
    CODECS
        .into_iter()
        .find(|c| c.as_str() == name)
        .map(avro_codec)
}

/// A block's data for `records` under `codec`: the records themselves for
/// `null`.
pub(crate) fn compress(codec: Codec, records: &[u8]) -> Result<Cow<'_, [u8]>, apache_avro::Error> {
    if codec == Codec::Null {
        return Ok(Cow::Borrowed(records));
    }
    // `Codec::compress` replaces the Vec it is given, so there is no
    // buffer worth reusing here.
    let mut v = records.to_vec();
    avro_codec(codec).compress(&mut v)?;
    Ok(Cow::Owned(v))
}

/// Decompresses in place, refusing output over [`MAX_BLOCK_BYTES`] where the
/// codec states its size up front (snappy).
pub(crate) fn decompress(codec: apache_avro::Codec, data: &mut Vec<u8>) -> Result<(), String> {
    match codec {
        apache_avro::Codec::Null => Ok(()),
        apache_avro::Codec::Snappy => {
            // Snappy's raw format starts with the decompressed length, an
            // unsigned varint of its own (not Avro's zigzag).
            let mut claimed: u64 = 0;
            for (i, b) in data.iter().take(5).enumerate() {
                claimed |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    break;
                }
            }
            if claimed > MAX_BLOCK_BYTES as u64 {
                return Err(format!("claims {claimed} bytes decompressed"));
            }
            codec.decompress(data).map_err(|e| e.to_string())
        }
        _ => {
            codec.decompress(data).map_err(|e| e.to_string())?;
            if data.len() > MAX_BLOCK_BYTES {
                return Err(format!("decompresses to {} bytes", data.len()));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_by_its_name() -> Result<(), Box<dyn std::error::Error>> {
        let records: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        for codec in CODECS {
            let by_name = from_name(codec.as_str());
            assert_eq!(by_name, Some(avro_codec(codec)), "{}", codec.as_str());
            let mut data = compress(codec, &records)?.into_owned();
            decompress(avro_codec(codec), &mut data)?;
            assert_eq!(data, records, "{}", codec.as_str());
        }
        assert_eq!(from_name("bzip2"), None);
        Ok(())
    }
}
