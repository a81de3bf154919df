//! Proto3 JSON for Connect calls, through `prost-reflect` and the
//! descriptors the server was built with, so every message of the protos
//! maps without hand-written conversions.

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor};

use crate::wire::status::tidy;

/// The binary encoding of a JSON message of type `desc`; unknown fields are
/// ignored (as Connect servers do), so older servers accept newer clients.
pub(crate) fn to_binary(desc: &MessageDescriptor, json: &[u8]) -> Result<Vec<u8>, String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let opts = DeserializeOptions::new().deny_unknown_fields(false);
    let msg = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &opts)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| {
            // serde's message may quote the input: keep it to a readable length.
            let e = e.to_string();
            format!(
                "the body is not a {} in proto3 JSON: {}",
                desc.full_name(),
                tidy(&e)
            )
        })?;
    Ok(msg.encode_to_vec())
}

/// The proto3 JSON of a binary message of type `desc` (lowerCamelCase
/// names, default values left out, 64-bit integers as strings).
pub(crate) fn to_json(desc: &MessageDescriptor, bin: &[u8]) -> Result<Vec<u8>, String> {
    let msg = DynamicMessage::decode(desc.clone(), bin)
        .map_err(|e| format!("could not decode a {}: {e}", desc.full_name()))?;
    serde_json::to_vec(&msg)
        .map_err(|e| format!("could not write a {} as JSON: {e}", desc.full_name()))
}
