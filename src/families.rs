//! The one table of loss families. Everything that lists the families (the fixture format's `loss` values,
//! `verify`, the quickstart, the GPU and emulator harnesses, the benches' driver) takes the list from here,
//! so registering a family is one line in this table.
//!
//! The table is an "x-macro": `for_each_family!(callback)` calls `callback!` once with every row,
//! `Variant => module::Marker, "name", FixtureHandler;`, where `Variant` names the family in
//! [`crate::fixture::LossKind`], `module::Marker` is its [`crate::family::Family`] implementation,
//! `"name"` its `Family::NAME` (its kernel file and fixtures' `loss` value) and `FixtureHandler` the
//! fixture case parser in `module::fixture`. A consumer takes only what it needs from the rows, so this file
//! imports nothing and no import cycle runs through it.

/// Calls `$callback!` with every registered family (see the module docs).
#[doc(hidden)]
#[macro_export]
macro_rules! for_each_family {
    ($callback:ident) => {
        $callback! {
            Cwd => cwd::Cwd, "cwd", CwdFixtures;
            PixelKd => pixel_kd::PixelKd, "pixel_kd", PixelKdFixtures;
            Icsd => icsd::Icsd, "icsd", IcsdFixtures;
            Semckd => semckd::Semckd, "semckd", SemckdFixtures;
            Cwt => cwt::Cwt, "cwt", CwtFixtures;
            Pkd => pkd::Pkd, "pkd", PkdFixtures;
            Dist => dist::Dist, "dist", DistFixtures;
            Ifvd => ifvd::Ifvd, "ifvd", IfvdFixtures;
            Skd => skd::Skd, "skd", SkdFixtures;
            Cirkd => cirkd::Cirkd, "cirkd", CirkdFixtures;
        }
    };
}
