//! The `echo` dispatcher plugin: every execution finishes at once with its input as output.
//!
//! It is the smallest complete plugin and the template for plugin authors (see `docs/plugins.md`):
//! it takes no configuration, uses one capability (`log`) and hands the input payload back
//! without copying its bytes into guest memory.

use nanofaas_plugin_sdk::prelude::*;

struct Echo;

impl Dispatcher for Echo {
    type Config = NoConfig;

    fn dispatch(call: &Call<NoConfig>, input: &Payload) -> Result<Outcome, Failure> {
        log::debug(&format!("echo {} bytes", input.size()));
        Ok(Outcome::output(&call.content_type, input.share()))
    }
}

nanofaas_plugin_sdk::export_dispatcher!(Echo);
