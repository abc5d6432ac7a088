#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nh_gateway_fuzz::json_map(data);
});
