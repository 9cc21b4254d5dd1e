//! `#[remote]` on a struct (the handle type) and on its impl block (the
//! constructor, the methods and their registration).

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, ItemImpl, ItemStruct, ReturnType, Type};

use crate::{finish_result, result_ok_type};

pub(crate) fn expand_struct(s: ItemStruct) -> syn::Result<TokenStream2> {
    if !s.generics.params.is_empty() {
        return Err(syn::Error::new(
            s.generics.span(),
            "an actor type cannot be generic: workers find it by name",
        ));
    }
    let vis = &s.vis;
    let name = &s.ident;
    let handle = format_ident!("{}Handle", name);
    let doc = format!(
        "Handle on a remote [`{name}`] actor: its methods return `ObjectRef`s at once. \
         Clone it freely and send it to tasks and other actors."
    );
    Ok(quote! {
        #s

        #[doc = #doc]
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        #vis struct #handle(::fleet::ActorHandle);

        impl ::std::convert::From<::fleet::ActorHandle> for #handle {
            fn from(h: ::fleet::ActorHandle) -> Self {
                #handle(h)
            }
        }

        impl ::std::convert::AsRef<::fleet::ActorHandle> for #handle {
            fn as_ref(&self) -> &::fleet::ActorHandle {
                &self.0
            }
        }

        impl ::std::ops::Deref for #handle {
            type Target = ::fleet::ActorHandle;
            fn deref(&self) -> &::fleet::ActorHandle {
                &self.0
            }
        }

        impl ::fleet::__private::serde::Serialize for #handle {
            fn serialize<S: ::fleet::__private::serde::Serializer>(
                &self,
                s: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                ::fleet::__private::serde::Serialize::serialize(&self.0, s)
            }
        }

        impl<'de> ::fleet::__private::serde::Deserialize<'de> for #handle {
            fn deserialize<D: ::fleet::__private::serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<Self, D::Error> {
                <::fleet::ActorHandle as ::fleet::__private::serde::Deserialize>::deserialize(d).map(#handle)
            }
        }
    })
}

struct Method {
    vis: syn::Visibility,
    name: syn::Ident,
    mutates: bool,
    is_async: bool,
    arg_types: Vec<Type>,
    ret: Type,
    returns_result: bool,
    /// generators: the method returns `impl Iterator<Item = T>`.
    stream: Option<crate::generator::Generator>,
    docs: Vec<syn::Attribute>,
}

fn typed_args(sig: &syn::Signature) -> syn::Result<Vec<Type>> {
    let mut out = Vec::new();
    for input in &sig.inputs {
        if let FnArg::Typed(t) = input {
            if let Some(e) = crate::checks::owned_parameter(t) {
                return Err(e);
            }
            out.push((*t.ty).clone());
        }
    }
    Ok(out)
}

fn return_type(out: &ReturnType) -> (Type, bool) {
    match out {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (ok.clone(), true),
            None => ((**ty).clone(), false),
        },
    }
}

fn arg_idents(n: usize) -> Vec<syn::Ident> {
    (0..n).map(|i| format_ident!("arg{}", i)).collect()
}

pub(crate) fn expand_impl(imp: ItemImpl, defaults: &crate::Options) -> syn::Result<TokenStream2> {
    if let Some((_, path, _)) = &imp.trait_ {
        return Err(syn::Error::new(
            path.span(),
            "#[remote] goes on the type's own impl block, not a trait impl",
        ));
    }
    if !imp.generics.params.is_empty() {
        return Err(syn::Error::new(
            imp.generics.span(),
            "an actor type cannot be generic",
        ));
    }
    let ty = &imp.self_ty;
    let Type::Path(tp) = &**ty else {
        return Err(syn::Error::new(ty.span(), "expected a type name"));
    };
    let name = &tp.path.segments.last().expect("a path has a segment").ident;
    let name_str = name.to_string();
    let handle = format_ident!("{}Handle", name);
    let options = format_ident!("{}Options", name);

    let mut constructor = None;
    let mut methods = Vec::new();
    for item in &imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let sig = &f.sig;
        let receiver = sig.receiver();
        if receiver.is_none() {
            if sig.ident == "new" {
                constructor = Some(f);
            }
            continue;
        }
        let r = receiver.expect("checked");
        if r.reference.is_none() {
            return Err(syn::Error::new(
                r.span(),
                "actor methods take `&self` or `&mut self`",
            ));
        }
        if !sig.generics.params.is_empty() {
            return Err(syn::Error::new(
                sig.generics.span(),
                "actor methods cannot be generic",
            ));
        }
        let stream = match &sig.output {
            ReturnType::Type(_, ty) => crate::generator::detect(ty)?,
            ReturnType::Default => None,
        };
        let (ret, returns_result) = match (&sig.output, &stream) {
            (ReturnType::Type(_, ty), Some(_)) => ((**ty).clone(), false),
            _ => return_type(&sig.output),
        };
        methods.push(Method {
            vis: f.vis.clone(),
            name: sig.ident.clone(),
            mutates: r.mutability.is_some(),
            is_async: sig.asyncness.is_some(),
            arg_types: typed_args(sig)?,
            ret,
            returns_result,
            stream,
            docs: f
                .attrs
                .iter()
                .filter(|a| a.path().is_ident("doc"))
                .cloned()
                .collect(),
        });
    }
    let Some(new) = constructor else {
        return Err(syn::Error::new(
            imp.self_ty.span(),
            "an actor impl needs a constructor `fn new(..) -> Self`",
        ));
    };
    let new_vis = &new.vis;
    let new_types = typed_args(&new.sig)?;
    let new_args = arg_idents(new_types.len());
    let new_is_result =
        matches!(&new.sig.output, ReturnType::Type(_, t) if result_ok_type(t).is_some());
    let build = if new_is_result {
        quote! {
            match <#ty>::new(#(#new_args),*) {
                ::std::result::Result::Ok(v) => ::std::result::Result::Ok(::fleet::__private::ActorState::new(v)),
                ::std::result::Result::Err(e) => ::std::result::Result::Err(
                    ::fleet::__private::Failure::User(::std::string::ToString::to_string(&e)),
                ),
            }
        }
    } else {
        quote!(::std::result::Result::Ok(::fleet::__private::ActorState::new(<#ty>::new(#(#new_args),*))))
    };
    let new_signature = format!(
        "({})",
        new_types
            .iter()
            .map(|t| quote!(#t).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut handle_methods = Vec::new();
    let mut registrations = Vec::new();
    for (i, m) in methods.iter().enumerate() {
        let Method {
            vis,
            name: mname,
            mutates,
            is_async,
            arg_types,
            ret,
            returns_result,
            stream,
            docs,
        } = m;
        let args = arg_idents(arg_types.len());
        let full = format!("::{name_str}::{mname}");
        if let Some(g) = stream {
            let item = &g.item;
            handle_methods.push(quote! {
                #(#docs)*
                #vis fn #mname(&self, #(#args: impl ::fleet::IntoArg<#arg_types>),*) -> ::fleet::ObjectRefStream<#item> {
                    self.0.call_generator(
                        ::std::concat!(::std::module_path!(), #full),
                        ::std::vec![#(::fleet::__private::arg::<#arg_types, _>(#args)),*],
                    )
                }
            });
        } else {
            handle_methods.push(quote! {
            #(#docs)*
            #vis fn #mname(&self, #(#args: impl ::fleet::IntoArg<#arg_types>),*) -> ::fleet::ObjectRef<#ret> {
                self.0.call(
                    ::std::concat!(::std::module_path!(), #full),
                    ::std::vec![#(::fleet::__private::arg::<#arg_types, _>(#args)),*],
                )
            }
        });
        }
        let invoke = format_ident!("invoke_{}", i);
        let slot = format_ident!("METHOD_{}", i);
        // An async method runs to completion on the worker's runtime, on
        // the actor's thread, holding the actor's lock.
        let invocation = if *is_async {
            quote!(::fleet::__private::block_on(this.#mname(#(#args),*)))
        } else {
            quote!(this.#mname(#(#args),*))
        };
        let access = if *mutates {
            quote!(with_mut)
        } else {
            quote!(with_ref)
        };
        let finish = finish_result(*returns_result);
        // A generator's items are sent while the method holds the actor.
        let call = match stream {
            Some(g) => {
                let run = g.finish();
                quote!(state.#access::<#ty, _>(|this| { let result = #invocation; #run })?)
            }
            None => quote! {{
                let result = state.#access::<#ty, _>(|this| #invocation)?;
                #finish
            }},
        };
        let signature = format!(
            "({}{}) -> {}",
            if *mutates { "&mut self" } else { "&self" },
            arg_types
                .iter()
                .map(|t| format!(", {}", quote!(#t)))
                .collect::<String>(),
            quote!(#ret)
        );
        registrations.push(quote! {
            fn #invoke(
                state: &::fleet::__private::ActorState,
                args: &mut ::fleet::__private::Args,
            ) -> ::std::result::Result<::fleet::__private::Output, ::fleet::__private::Failure> {
                #(let #args: #arg_types = args.take()?;)*
                #call
            }

            #[::fleet::__private::linkme::distributed_slice(::fleet::__private::ACTOR_METHODS)]
            #[linkme(crate = ::fleet::__private::linkme)]
            static #slot: ::fleet::__private::ActorMethod = ::fleet::__private::ActorMethod {
                name: ::std::concat!(::std::module_path!(), #full),
                signature: #signature,
                invoke: #invoke,
            };
        });
    }
    let options_doc = format!("How a [`{name}`] actor is created; see `fleet::ActorOptions`.");
    // `#[remote(num_cpus = .., resources(..), memory = "..")]` on the impl:
    // the actor's defaults.
    let defaults = {
        let cpus = defaults.num_cpus.map(|n| quote!(.num_cpus(#n)));
        let res = defaults.resource_calls();
        quote!(#cpus #res)
    };

    Ok(quote! {
        #imp

        impl ::fleet::Actor for #ty {
            type Handle = #handle;
            const CLASS: &'static str = ::std::concat!(::std::module_path!(), "::", #name_str);
        }

        #[doc = #options_doc]
        #[derive(Clone, Debug)]
        #new_vis struct #options(::fleet::ActorOptions);

        impl #options {
            /// A cluster-wide name for `fleet::get_actor`.
            #new_vis fn name(self, name: impl ::std::convert::Into<::std::string::String>) -> Self {
                #options(self.0.name(name))
            }
            /// Rebuilds after the actor's process dies, at most `n` times.
            #new_vis fn max_restarts(self, n: u32) -> Self {
                #options(self.0.max_restarts(n))
            }
            /// Retries of a call that was running when the process died.
            #new_vis fn max_task_retries(self, n: u32) -> Self {
                #options(self.0.max_task_retries(n))
            }
            /// Calls that may run at once (`&self` methods in parallel).
            #new_vis fn max_concurrency(self, n: u32) -> Self {
                #options(self.0.max_concurrency(n))
            }
            /// CPUs reserved for the actor's life.
            #new_vis fn num_cpus(self, n: f64) -> Self {
                #options(self.0.num_cpus(n))
            }
            /// Outlives the creating driver until `fleet::kill` (needs a name).
            #new_vis fn detached(self) -> Self {
                #options(self.0.detached())
            }
            /// Returns the live actor of this name if there is one.
            #new_vis fn get_if_exists(self, yes: bool) -> Self {
                #options(self.0.get_if_exists(yes))
            }
            /// Holds `amount` of a custom resource for the actor's life.
            #new_vis fn resource(self, name: &str, amount: f64) -> Self {
                #options(self.0.resource(name, amount))
            }
            /// Holds `bytes` of its node's memory for the actor's life.
            #new_vis fn memory(self, bytes: u64) -> Self {
                #options(self.0.memory(bytes))
            }
            /// Places actors round-robin over the nodes.
            #new_vis fn spread(self) -> Self {
                #options(self.0.spread())
            }
            /// Prefers the named node; elsewhere if it has no room.
            #new_vis fn node_soft(self, node: impl ::std::convert::Into<::std::string::String>) -> Self {
                #options(self.0.node_soft(node))
            }
            /// Creates the actor with these options.
            #new_vis fn remote(&self, #(#new_args: impl ::fleet::IntoArg<#new_types>),*) -> ::fleet::Result<#handle> {
                self.0
                    .create(::std::vec![#(::fleet::__private::arg::<#new_types, _>(#new_args)),*])
                    .map(#handle)
            }
        }

        impl #ty {
            /// Creates the actor on the cluster; its methods are called
            /// through the returned handle.
            #new_vis fn remote(#(#new_args: impl ::fleet::IntoArg<#new_types>),*) -> ::fleet::Result<#handle> {
                Self::options().remote(#(#new_args),*)
            }

            /// Options for creating the actor.
            #new_vis fn options() -> #options {
                #options(::fleet::ActorOptions::new(<Self as ::fleet::Actor>::CLASS) #defaults)
            }
        }

        impl #handle {
            #(#handle_methods)*
        }

        const _: () = {
            fn construct(
                args: &mut ::fleet::__private::Args,
            ) -> ::std::result::Result<::fleet::__private::ActorState, ::fleet::__private::Failure> {
                #(let #new_args: #new_types = args.take()?;)*
                #build
            }

            #[::fleet::__private::linkme::distributed_slice(::fleet::__private::ACTOR_CLASSES)]
            #[linkme(crate = ::fleet::__private::linkme)]
            static CLASS: ::fleet::__private::ActorClass = ::fleet::__private::ActorClass {
                name: <#ty as ::fleet::Actor>::CLASS,
                signature: #new_signature,
                construct,
            };

            #(#registrations)*
        };
    })
}
