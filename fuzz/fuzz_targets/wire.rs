//! Protocol messages from the peer (protobuf, after TLS): every message
//! type, then the tensors they carry as the trainer decodes them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use vfl_bridge::pb;

fuzz_target!(|data: &[u8]| {
    let _ = pb::HelloRequest::decode(data);
    let _ = pb::HelloReply::decode(data);
    if let Ok(m) = pb::FollowerMessage::decode(data)
        && let Some(pb::follower_message::Msg::Activations(a)) = m.msg
        && let Some(t) = a.tensor
    {
        let w = vfl_trainer::wire::WireTensor {
            shape: t.shape,
            data: t.data.to_vec(),
        };
        let mut out = vfl_nn::Matrix::zeros(4, 3);
        let _ = w.decode_into("activations", (4, 3), &mut out);
    }
    if let Ok(m) = pb::LeaderMessage::decode(data)
        && let Some(pb::leader_message::Msg::Gradient(g)) = m.msg
        && let Some(t) = g.tensor
    {
        let w = vfl_trainer::wire::WireTensor {
            shape: t.shape,
            data: t.data.to_vec(),
        };
        let mut out = vfl_nn::Matrix::zeros(4, 3);
        let _ = w.decode_into("gradient", (4, 3), &mut out);
    }
});
