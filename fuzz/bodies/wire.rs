//! Protocol messages from the peer (protobuf, after TLS): every message
//! type, then the tensors and digests they carry as the trainer decodes
//! them.

use prost::Message;
use vfl_bridge::pb;

/// One input.
pub fn run(data: &[u8]) {
    let _ = pb::HelloRequest::decode(data);
    let _ = pb::HelloReply::decode(data);
    let mut out = vfl_nn::Matrix::zeros(4, 3);
    if let Ok(m) = pb::FollowerMessage::decode(data)
        && let Some(pb::follower_message::Msg::Activations(a)) = m.msg
    {
        let _ = vfl_trainer::wire::digest(&a);
        let _ = vfl_trainer::wire::decode_into(a.tensor.as_ref(), "activations", (4, 3), &mut out);
    }
    if let Ok(m) = pb::LeaderMessage::decode(data)
        && let Some(pb::leader_message::Msg::Gradient(g)) = m.msg
    {
        let _ = vfl_trainer::wire::decode_into(g.tensor.as_ref(), "gradient", (4, 3), &mut out);
    }
}
