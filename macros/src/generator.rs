//! Streaming generators: a remote function returning
//! `impl Iterator<Item = T>` (or `Result<impl Iterator<Item = T>, E>`)
//! yields its items as refs while it runs; `f::remote(..)` returns a
//! `fleet::ObjectRefStream<T>`. An item type `Result<T, E>` makes a stream
//! of `T` that an `Err` ends.

use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::spanned::Spanned;
use syn::{GenericArgument, PathArguments, Type, TypeParamBound};

/// What a generator function's return type says.
pub(crate) struct Generator {
    /// The type of each item's ref: `T`.
    pub(crate) item: Type,
    /// The items are `Result<T, E>`: an `Err` ends the stream.
    fallible_items: bool,
    /// The function returns `Result<impl Iterator.., E>`.
    fallible_start: bool,
}

const ONLY_ITERATOR: &str = "a remote function may return `impl Iterator<Item = T>` (a streaming \
     generator: `f::remote(..)` gives a `fleet::ObjectRefStream<T>`), or \
     `Result<impl Iterator<Item = T>, E>`; any other `impl Trait` cannot be sent to another \
     process: return a concrete type";

/// Whether `ty` mentions `impl Trait` anywhere.
fn mentions_impl(ty: &Type) -> bool {
    match ty {
        Type::ImplTrait(_) => true,
        Type::Tuple(t) => t.elems.iter().any(mentions_impl),
        Type::Array(a) => mentions_impl(&a.elem),
        Type::Slice(s) => mentions_impl(&s.elem),
        Type::Paren(p) => mentions_impl(&p.elem),
        Type::Group(g) => mentions_impl(&g.elem),
        Type::Reference(r) => mentions_impl(&r.elem),
        Type::Path(p) => p.path.segments.iter().any(|s| match &s.arguments {
            PathArguments::AngleBracketed(a) => a.args.iter().any(|g| match g {
                GenericArgument::Type(t) => mentions_impl(t),
                _ => false,
            }),
            _ => false,
        }),
        _ => false,
    }
}

/// `X` of `impl Iterator<Item = X>` (or `IntoIterator`), or an error
/// naming the supported forms.
pub(crate) fn iterator_item(ty: &Type) -> syn::Result<Type> {
    let Type::ImplTrait(imp) = ty else {
        return Err(syn::Error::new(ty.span(), ONLY_ITERATOR));
    };
    for bound in &imp.bounds {
        let TypeParamBound::Trait(t) = bound else {
            continue;
        };
        let Some(last) = t.path.segments.last() else {
            continue;
        };
        if last.ident != "Iterator" && last.ident != "IntoIterator" {
            continue;
        }
        if let PathArguments::AngleBracketed(args) = &last.arguments {
            for a in &args.args {
                if let GenericArgument::AssocType(at) = a {
                    if at.ident == "Item" {
                        if mentions_impl(&at.ty) {
                            return Err(syn::Error::new(at.ty.span(), ONLY_ITERATOR));
                        }
                        return Ok(at.ty.clone());
                    }
                }
            }
        }
        return Err(syn::Error::new(
            last.span(),
            "name the item type of the generator: `impl Iterator<Item = T>`",
        ));
    }
    Err(syn::Error::new(ty.span(), ONLY_ITERATOR))
}

/// The generator a return type declares: `None` for a plain function; an
/// error for an `impl Trait` that is not a supported form.
pub(crate) fn detect(output: &Type) -> syn::Result<Option<Generator>> {
    if !mentions_impl(output) {
        return Ok(None);
    }
    let (iter, fallible_start) = match crate::result_ok_type(output) {
        Some(ok) => (ok, true),
        None => (output, false),
    };
    let item = iterator_item(iter)?;
    let (item, fallible_items) = match crate::result_ok_type(&item) {
        Some(ok) => (ok.clone(), true),
        None => (item, false),
    };
    Ok(Some(Generator {
        item,
        fallible_items,
        fallible_start,
    }))
}

impl Generator {
    /// Code that runs `result`, the function's return value, as the stream.
    pub(crate) fn finish(&self) -> TokenStream2 {
        let run = match self.fallible_items {
            true => quote!(::fleet::__private::generate_results),
            false => quote!(::fleet::__private::generate),
        };
        if self.fallible_start {
            quote! {
                match result {
                    ::std::result::Result::Ok(items) => #run(items),
                    ::std::result::Result::Err(e) => ::std::result::Result::Err(
                        ::fleet::__private::Failure::User(::std::string::ToString::to_string(&e)),
                    ),
                }
            }
        } else {
            quote!(#run(result))
        }
    }
}
