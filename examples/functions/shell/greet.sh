#!/bin/sh
# nanofaas example (local dispatcher, raw mode): the input bytes are the name to greet.
# Execution id, trace id, attempt and deadline arrive as environment variables.
name=$(cat)
printf 'Hello, %s! (function %s, attempt %s)\n' "${name:-world}" "$FUNCTION_NAME" "$ATTEMPT"
