// The STDIO envelope of an invocation as a host payload, shared by the `local` and `pool`
// plugins (each `include!`s it after its `wit_bindgen::generate!`). A JSON input is passed
// through by handle, never copied into the guest.

fn envelope(inv: &Invocation, input: &Payload) -> Payload {
    if nanofaas_contract::is_json(&inv.content_type) {
        let (prefix, suffix) = nanofaas_contract::json_envelope_parts(&inv.metadata);
        return Payload::new(&[Part::Bytes(prefix.to_vec()), Part::Payload(input), Part::Bytes(suffix)]);
    }
    let bytes = input.read(0, input.size() as u32);
    Payload::new(&[Part::Bytes(nanofaas_contract::bytes_envelope(bytes, &inv.metadata))])
}
