//! [`export_plugin!`](crate::export_plugin): the root module a `cdylib` exports, and the copy
//! heap as its global allocator.
//!
//! A macro because the root module, the allocator and the heap-range symbol must be items of
//! the plugin library itself, not of this crate; the macro is the one place that writes them.

/// Exports a plugin's root module. `start` is a `fn(HostServicesBox, RString) ->
/// RResult<PluginInstanceBox, RString>`, usually a call to [`start_instance`](crate::start_instance).
///
/// It also makes [`heap::CopyHeap`](crate::heap::CopyHeap) the library's global allocator and exports the range it
/// occupies, so the host can free everything the copy allocated once the copy is closed. Use
/// it once, in the `cdylib` crate.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, version: $version:expr, description: $description:expr, start: $start:path $(,)?) => {
        #[global_allocator]
        static __POWERAUTOMATION_COPY_HEAP: $crate::heap::CopyHeap = $crate::heap::CopyHeap;

        /// The copy's heap range, for the host to unmap after closing the library.
        #[no_mangle]
        pub extern "C" fn powerautomation_plugin_heap() -> ::plugin_api::PluginHeap {
            $crate::heap::reserved()
        }

        #[::abi_stable::export_root_module]
        pub fn powerautomation_plugin_root() -> ::plugin_api::PluginModRef {
            extern "C" fn __plugin_metadata() -> ::plugin_api::PluginMetadata {
                ::plugin_api::PluginMetadata {
                    name: $name.into(),
                    version: $version.into(),
                    description: $description.into(),
                }
            }
            extern "C" fn __plugin_start(
                host: ::plugin_api::HostServicesBox,
                settings: ::abi_stable::std_types::RString,
            ) -> ::abi_stable::std_types::RResult<
                ::plugin_api::PluginInstanceBox,
                ::abi_stable::std_types::RString,
            > {
                $start(host, settings)
            }
            const MODULE: &::abi_stable::prefix_type::WithMetadata<::plugin_api::PluginMod> =
                &::abi_stable::prefix_type::WithMetadata::new(::plugin_api::PluginMod {
                    metadata: __plugin_metadata,
                    start: __plugin_start,
                });
            ::plugin_api::PluginModRef(MODULE.static_as_prefix())
        }
    };
}
