//! Property tests with hostile text (issue #12): the bgp-config and values.yaml parsers and the
//! Go-duration parser answer any text — the seed's files edited, cut or garbled, or text of no
//! shape — with a value or an error naming the file, never a panic.

use proptest::prelude::*;
use routeplane_testkit::hostile::{any_text, config, mutated};

use crate::{BgpConfig, ConfigError, HelmValues, parse_go_duration};

const SEED_BGP: &str = include_str!("../../../examples/seed/bgp-config.yaml");
const SEED_VALUES: &str = include_str!("../../../examples/seed/values.yaml");

/// An error must name the file it is about, so that a user can find what to fix.
fn names_the_origin(e: &ConfigError) -> bool {
    e.to_string().contains("hostile.yaml")
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn bgp_config_edited_or_garbled_is_parsed_or_refused_by_name(
        text in prop_oneof![mutated(SEED_BGP), any_text()],
    ) {
        if let Err(e) = BgpConfig::parse(&text, "hostile.yaml") {
            prop_assert!(names_the_origin(&e), "{e}");
        }
    }

    #[test]
    fn values_yaml_edited_or_garbled_is_parsed_or_refused_by_name(
        text in prop_oneof![mutated(SEED_VALUES), any_text()],
    ) {
        if let Err(e) = HelmValues::parse(&text, "hostile.yaml") {
            prop_assert!(names_the_origin(&e), "{e}");
        }
    }

    #[test]
    fn any_duration_text_parses_or_is_refused(text in any_text()) {
        let _ = parse_go_duration(&text);
    }
}
