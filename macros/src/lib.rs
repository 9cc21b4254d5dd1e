//! `#[fleet::remote]`: turns a function into a task that runs on a cluster.
//!
//! The function stays callable as before. Beside it the macro adds a module
//! of the same name (modules and functions live in different namespaces)
//! holding `remote(..)`, `options()` and the function's registration in the
//! link-time registry under its stable name, `module_path!()::name`.

mod actor;
mod checks;
mod generator;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, FnArg, GenericArgument, Item, ItemFn, PathArguments, ReturnType, Type,
    Visibility,
};

/// Marks a function as remote (options: `num_cpus = <f64>`,
/// `max_retries = <u32>`; defaults 1 and 3), or, on a struct and on its
/// impl block, makes the type an actor: `T::remote(..)` runs `T::new(..)`
/// in a worker and returns a `THandle` whose methods return `ObjectRef`s.
/// On an inline module, makes each function in it remote.
/// A function returning `impl Iterator<Item = T>` is a streaming generator:
/// `f::remote(..)` returns a `fleet::ObjectRefStream<T>` of its items
/// (option `generator_backpressure = <u32>`, default 16).
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("num_cpus") {
            options.num_cpus = Some(number(&meta.value()?.parse()?)?);
            Ok(())
        } else if meta.path.is_ident("max_retries") {
            let lit: syn::LitInt = meta.value()?.parse()?;
            options.max_retries = Some(lit.base10_parse::<u32>()?);
            Ok(())
        } else if meta.path.is_ident("num_returns") {
            let lit: syn::LitInt = meta.value()?.parse()?;
            let n = lit.base10_parse::<u32>()?;
            if n == 0 {
                return Err(syn::Error::new(
                    lit.span(),
                    "num_returns must be at least 1",
                ));
            }
            options.num_returns = Some((n, lit.span()));
            Ok(())
        } else if meta.path.is_ident("generator_backpressure") {
            let lit: syn::LitInt = meta.value()?.parse()?;
            options.generator_backpressure = Some(lit.base10_parse::<u32>()?);
            Ok(())
        } else if meta.path.is_ident("retry_on_error") {
            let lit: syn::LitBool = meta.value()?.parse()?;
            options.retry_on_error = Some(lit.value);
            Ok(())
        } else if meta.path.is_ident("resources") {
            meta.parse_nested_meta(|r| {
                let name = r
                    .path
                    .get_ident()
                    .ok_or_else(|| r.error("expected `name = amount`, e.g. resources(gpu = 1.0)"))?
                    .to_string();
                let amount = number(&r.value()?.parse()?)?;
                options.resources.push((name, amount));
                Ok(())
            })
        } else if meta.path.is_ident("memory") {
            options.memory = Some(checks::memory_bytes(&meta.value()?.parse()?)?);
            Ok(())
        } else {
            Err(meta.error(
                "unknown option; expected `num_cpus`, `max_retries`, `retry_on_error`, \
                 `num_returns`, `generator_backpressure`, `resources(name = amount, ..)` or \
                 `memory = \"2GiB\"`",
            ))
        }
    });
    parse_macro_input!(attr with parser);
    let item = parse_macro_input!(item as Item);
    let expanded = match item {
        Item::Fn(f) => expand_fn(&options, f),
        Item::Struct(s) => actor::expand_struct(s),
        Item::Impl(i) => actor::expand_impl(i, &options),
        Item::Mod(m) => expand_mod(&options, m),
        other => Err(syn::Error::new(
            other.span(),
            "#[remote] applies to functions, to a module of functions, and to a struct plus \
             its impl block (actors)",
        )),
    };
    expanded.unwrap_or_else(|e| e.to_compile_error()).into()
}

#[derive(Default)]
struct Options {
    num_cpus: Option<f64>,
    max_retries: Option<u32>,
    retry_on_error: Option<bool>,
    num_returns: Option<(u32, Span)>,
    /// `resources(gpu = 1.0, ..)`.
    resources: Vec<(String, f64)>,
    /// `memory = "2GiB"`, in bytes.
    memory: Option<u64>,
    generator_backpressure: Option<u32>,
}

impl Options {
    /// `.resource(..)` and `.memory(..)` calls setting the declared
    /// resources as defaults (on `TaskOptions` or `ActorOptions`).
    fn resource_calls(&self) -> TokenStream2 {
        let names = self.resources.iter().map(|(n, _)| n);
        let amounts = self.resources.iter().map(|(_, a)| a);
        let memory = self.memory.map(|m| quote!(.memory(#m)));
        quote!(#(.resource(#names, #amounts))* #memory)
    }
}

/// A number literal (integer or float) as `f64`.
fn number(lit: &syn::Lit) -> syn::Result<f64> {
    match lit {
        syn::Lit::Int(i) => i.base10_parse::<f64>(),
        syn::Lit::Float(f) => f.base10_parse::<f64>(),
        other => Err(syn::Error::new(other.span(), "expected a number")),
    }
}

/// `T` of a return type spelled `Result<T, ..>`; the function's `Err`
/// becomes the task's error.
pub(crate) fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    }
}

/// Code that encodes `result`, the function's return value; a `Result`'s
/// `Err` becomes the task's error, by its `Display` text.
pub(crate) fn finish_result(returns_result: bool) -> TokenStream2 {
    if returns_result {
        quote! {
            match result {
                ::std::result::Result::Ok(v) => ::fleet::__private::output(&v),
                ::std::result::Result::Err(e) => ::std::result::Result::Err(
                    ::fleet::__private::Failure::User(::std::string::ToString::to_string(&e)),
                ),
            }
        }
    } else {
        quote!(::fleet::__private::output(&result))
    }
}

/// Visibility of the items inside the generated module, as seen from the
/// function's own module.
fn inner_visibility(vis: &Visibility) -> TokenStream2 {
    match vis {
        Visibility::Inherited => quote!(pub(super)),
        Visibility::Public(_) => quote!(pub),
        Visibility::Restricted(r) if r.path.is_ident("crate") => quote!(pub(crate)),
        Visibility::Restricted(_) => quote!(pub(crate)),
    }
}

fn expand_fn(options: &Options, f: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &f.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a remote function cannot be generic: workers find it by name and decode its \
             arguments by their types, so write one function per concrete type",
        ));
    }
    if checks::mentions_self(sig) {
        return Err(checks::method_outside_impl(sig.ident.span()));
    }
    let is_async = sig.asyncness.is_some();
    let name = &sig.ident;
    let vis = &f.vis;
    let inner = inner_visibility(vis);
    let mut arg_names = Vec::new();
    let mut arg_types = Vec::new();
    let mut errors: Option<syn::Error> = None;
    for (i, input) in sig.inputs.iter().enumerate() {
        match input {
            FnArg::Typed(t) => {
                if let Some(e) = checks::owned_parameter(t) {
                    match &mut errors {
                        Some(all) => all.combine(e),
                        None => errors = Some(e),
                    }
                }
                arg_names.push(format_ident!("arg{}", i, span = Span::call_site()));
                arg_types.push((*t.ty).clone());
            }
            FnArg::Receiver(r) => {
                return Err(checks::method_outside_impl(r.span()));
            }
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }
    let stream = match &sig.output {
        ReturnType::Type(_, ty) => generator::detect(ty)?,
        ReturnType::Default => None,
    };
    if let (Some(_), Some((_, span))) = (&stream, options.num_returns) {
        return Err(syn::Error::new(
            span,
            "num_returns and a generator (`-> impl Iterator`) do not mix: a generator's \
             items are refs already",
        ));
    }
    let (ret, returns_result) = match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) if stream.is_some() => ((**ty).clone(), false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (ok.clone(), true),
            None => ((**ty).clone(), false),
        },
    };
    let signature = format!(
        "({}) -> {}",
        arg_types
            .iter()
            .map(|t| quote!(#t).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        quote!(#ret)
    );
    let num_cpus = options.num_cpus.map(|n| quote!(.num_cpus(#n)));
    let max_retries = options.max_retries.map(|n| quote!(.max_retries(#n)));
    let retry_on_error = options.retry_on_error.map(|b| quote!(.retry_on_error(#b)));
    let resources = options.resource_calls();
    let backpressure = options
        .generator_backpressure
        .map(|n| quote!(.generator_backpressure(#n)));
    let returns = match options.num_returns {
        Some((n, span)) if n > 1 => Some(tuple_returns(&ret, n, span)?),
        _ => None,
    };
    let finish = match (&returns, &stream) {
        (_, Some(g)) => g.finish(),
        (Some(r), None) => r.finish(returns_result),
        (None, None) => finish_result(returns_result),
    };
    // The call resolves `name` through `super::*` next to a stand-in, so a
    // function inside a function body gets one error, the module-level one.
    let stand_in = checks::stand_in(sig, &arg_types);
    let callee = match stand_in {
        Some(_) => quote!(#name),
        None => quote!(super::#name),
    };
    // An async function runs to completion on the worker's runtime.
    let call = if is_async {
        quote!(::fleet::__private::block_on(#callee(#(#arg_names),*)))
    } else {
        quote!(#callee(#(#arg_names),*))
    };
    let (refs, submit) = match &returns {
        Some(r) => {
            let n = r.types.len() as u32;
            let types = &r.types;
            let takes = r.types.iter().map(|_| quote!(r.next()));
            (
                quote!((#(::fleet::ObjectRef<#types>),*)),
                quote! {
                    let mut r = self.0.submit_returns(#n, args);
                    (#(#takes),*)
                },
            )
        }
        None => match &stream {
            Some(g) => {
                let item = &g.item;
                (
                    quote!(::fleet::ObjectRefStream<#item>),
                    quote!(self.0.submit_generator(args)),
                )
            }
            None => (
                quote!(::fleet::ObjectRef<#ret>),
                quote!(self.0.submit(args)),
            ),
        },
    };
    let call = quote! {{
        #stand_in
        {
            #[allow(unused_imports)]
            use super::*;
            #call
        }
    }};
    let marker = checks::module_level_marker(name);
    let module_check = checks::module_level_check(name);
    let map = map_fns(&inner, &arg_names, &arg_types, &refs);
    let doc = format!("Remote form of [`{name}`]: `{name}::remote(..)` runs it on the cluster.");
    Ok(quote! {
        #f

        #marker

        #[doc = #doc]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            #module_check

            /// Stable name of the function in the registry.
            #inner const NAME: &str = ::std::module_path!();

            /// Options for one call; see `fleet::TaskOptions`.
            #[derive(Clone, Debug)]
            #inner struct Options(::fleet::TaskOptions);

            /// The defaults given in `#[remote(..)]`.
            #inner fn options() -> Options {
                Options(::fleet::TaskOptions::new(NAME) #num_cpus #max_retries #retry_on_error #backpressure #resources)
            }

            /// Submits a call; each argument may be a value or an `ObjectRef` of it.
            #inner fn remote(#(#arg_names: impl ::fleet::IntoArg<#arg_types>),*) -> #refs {
                options().remote(#(#arg_names),*)
            }

            impl Options {
                /// CPUs the call reserves while it runs.
                #inner fn num_cpus(self, n: f64) -> Self {
                    Options(self.0.num_cpus(n))
                }

                /// Retries if the worker process dies.
                #inner fn max_retries(self, n: u32) -> Self {
                    Options(self.0.max_retries(n))
                }

                /// Retries an `Err` or panic too, up to `max_retries`.
                #inner fn retry_on_error(self, yes: bool) -> Self {
                    Options(self.0.retry_on_error(yes))
                }

                /// A generator's items yielded beyond those taken before it waits.
                #inner fn generator_backpressure(self, n: u32) -> Self {
                    Options(self.0.generator_backpressure(n))
                }

                /// Runs the call only on the named node.
                #inner fn node(self, node: impl ::std::convert::Into<::std::string::String>) -> Self {
                    Options(self.0.node(node))
                }

                /// Prefers the named node; runs elsewhere if it has no room.
                #inner fn node_soft(self, node: impl ::std::convert::Into<::std::string::String>) -> Self {
                    Options(self.0.node_soft(node))
                }

                /// Reserves `amount` of a custom resource while it runs.
                #inner fn resource(self, name: &str, amount: f64) -> Self {
                    Options(self.0.resource(name, amount))
                }

                /// Reserves `bytes` of the node's memory while it runs.
                #inner fn memory(self, bytes: u64) -> Self {
                    Options(self.0.memory(bytes))
                }

                /// Places calls round-robin over the nodes.
                #inner fn spread(self) -> Self {
                    Options(self.0.spread())
                }

                /// Submits a call with these options.
                #inner fn remote(&self, #(#arg_names: impl ::fleet::IntoArg<#arg_types>),*) -> #refs {
                    let args = ::std::vec![#(::fleet::__private::arg::<#arg_types, _>(#arg_names)),*];
                    #submit
                }
            }

            #map

            fn invoke(
                args: &mut ::fleet::__private::Args,
            ) -> ::std::result::Result<::fleet::__private::Output, ::fleet::__private::Failure> {
                #(let #arg_names: #arg_types = args.take()?;)*
                let result = #call;
                #finish
            }

            #[::fleet::__private::linkme::distributed_slice(::fleet::__private::REMOTE_FUNCTIONS)]
            #[linkme(crate = ::fleet::__private::linkme)]
            static REGISTRATION: ::fleet::__private::RemoteFunction = ::fleet::__private::RemoteFunction {
                name: NAME,
                signature: #signature,
                invoke,
            };
        }
    })
}

/// A function's tuple result split into one ref per element
/// (`num_returns = n`).
struct TupleReturns {
    types: Vec<Type>,
}

fn tuple_returns(ret: &Type, n: u32, span: Span) -> syn::Result<TupleReturns> {
    match ret {
        Type::Tuple(t) if t.elems.len() == n as usize => Ok(TupleReturns {
            types: t.elems.iter().cloned().collect(),
        }),
        Type::Tuple(t) => Err(syn::Error::new(
            ret.span(),
            format!(
                "num_returns = {n} needs a tuple of {n} elements; this one has {}",
                t.elems.len()
            ),
        )),
        _ => Err(syn::Error::new(
            span,
            format!("num_returns = {n} needs the function to return a tuple of {n} elements"),
        )),
    }
}

impl TupleReturns {
    /// Encodes each element of `result` (a tuple, or `Ok` of one) on its own.
    fn finish(&self, returns_result: bool) -> TokenStream2 {
        let names: Vec<_> = (0..self.types.len())
            .map(|i| format_ident!("ret{}", i, span = Span::call_site()))
            .collect();
        let encode = quote! {
            let (#(#names),*) = v;
            ::fleet::__private::outputs(::std::vec![#(::fleet::__private::output(&#names)?),*])
        };
        if returns_result {
            quote! {
                match result {
                    ::std::result::Result::Ok(v) => { #encode }
                    ::std::result::Result::Err(e) => ::std::result::Result::Err(
                        ::fleet::__private::Failure::User(::std::string::ToString::to_string(&e)),
                    ),
                }
            }
        } else {
            quote! {
                let v = result;
                #encode
            }
        }
    }
}

/// `f::map(inputs)` and `f::options().map(inputs)`: one call per input, in
/// input order, as `Pool.map` and `executor.map` do. An input is the
/// argument itself (one parameter) or a tuple of the arguments.
fn map_fns(
    inner: &TokenStream2,
    arg_names: &[syn::Ident],
    arg_types: &[Type],
    refs: &TokenStream2,
) -> TokenStream2 {
    if arg_names.is_empty() {
        return TokenStream2::new();
    }
    let xs: Vec<syn::Ident> = (0..arg_names.len())
        .map(|i| format_ident!("__X{}", i))
        .collect();
    let (item, pattern) = if arg_names.len() == 1 {
        let x = &xs[0];
        let a = &arg_names[0];
        (quote!(#x), quote!(#a))
    } else {
        (quote!((#(#xs,)*)), quote!((#(#arg_names,)*)))
    };
    let bounds = quote!(#(#xs: ::fleet::IntoArg<#arg_types>),*);
    let doc = if arg_names.len() == 1 {
        "One call per input, in input order (as `Pool.map`); each input may be a value, a \
         reference to one, or an `ObjectRef` of it."
    } else {
        "One call per input tuple `(a, b, ..)`, in input order (as `executor.map` over \
         zipped lists); each element may be a value, a reference to one, or an `ObjectRef`."
    };
    quote! {
        #[doc = #doc]
        #inner fn map<__I, #(#xs),*>(inputs: __I) -> ::std::vec::Vec<#refs>
        where
            __I: ::std::iter::IntoIterator<Item = #item>,
            #bounds
        {
            options().map(inputs)
        }

        impl Options {
            #[doc = #doc]
            #inner fn map<__I, #(#xs),*>(&self, inputs: __I) -> ::std::vec::Vec<#refs>
            where
                __I: ::std::iter::IntoIterator<Item = #item>,
                #bounds
            {
                inputs
                    .into_iter()
                    .map(|#pattern| self.remote(#(#arg_names),*))
                    .collect()
            }
        }
    }
}

/// `#[remote]` on an inline module: each function in it is remote, with
/// the module's options; other items stay as they are. Porting code whose
/// work functions sit in one module is then one line.
fn expand_mod(options: &Options, mut m: syn::ItemMod) -> syn::Result<TokenStream2> {
    let Some((_, items)) = m.content.take() else {
        return Err(syn::Error::new(
            m.span(),
            "#[remote] applies to a module written inline (`mod work { .. }`), not to `mod work;`",
        ));
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Item::Fn(f) => {
                let expanded = expand_fn(options, f)?;
                out.push(syn::parse2::<syn::File>(expanded)?.items);
            }
            other => out.push(vec![other]),
        }
    }
    let attrs = &m.attrs;
    let vis = &m.vis;
    let ident = &m.ident;
    let items = out.into_iter().flatten();
    Ok(quote! {
        #(#attrs)*
        #vis mod #ident {
            #(#items)*
        }
    })
}
