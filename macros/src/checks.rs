//! Checks that turn a misuse of `#[remote]` into one error that names the
//! fix, instead of the errors the generated code would cause later.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{GenericArgument, PathArguments, ReturnType, Signature, Type};

/// An error on a parameter whose type borrows (`&str`, `&Vec<u64>`,
/// `(&str, &str)`, `Cow<'a, str>`, `impl Trait`): the arguments of a remote
/// call are encoded and sent to another process, so the function must take
/// owned values. The message suggests the owned type.
pub(crate) fn owned_parameter(param: &syn::PatType) -> Option<syn::Error> {
    let ty = &*param.ty;
    if !borrows(ty) {
        return None;
    }
    let owned = owned(ty).to_token_stream().to_string();
    Some(syn::Error::new(
        param.span(),
        format!(
            "remote functions take owned values (`String`, `Vec<T>`, ...), because their \
             arguments are sent to another process: write this parameter's type as `{}`; \
             callers may still pass a reference such as `&x` or `\"text\"`",
            tidy(&owned)
        ),
    ))
}

/// `quote`'s spacing (`Vec < u64 >`) made readable.
fn tidy(s: &str) -> String {
    s.replace(" < ", "<")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace("& ", "&")
        .replace("[ ", "[")
        .replace(" ]", "]")
        .replace(" ;", ";")
}

/// Whether `ty` holds a borrow, a lifetime or an `impl Trait` anywhere.
fn borrows(ty: &Type) -> bool {
    match ty {
        Type::Reference(_) | Type::ImplTrait(_) | Type::Ptr(_) | Type::BareFn(_) => true,
        Type::Tuple(t) => t.elems.iter().any(borrows),
        Type::Array(a) => borrows(&a.elem),
        Type::Slice(s) => borrows(&s.elem),
        Type::Paren(p) => borrows(&p.elem),
        Type::Group(g) => borrows(&g.elem),
        Type::TraitObject(_) => true,
        Type::Path(p) => {
            p.qself.as_ref().is_some_and(|q| borrows(&q.ty))
                || p.path.segments.iter().any(|s| match &s.arguments {
                    PathArguments::AngleBracketed(a) => a.args.iter().any(|g| match g {
                        GenericArgument::Lifetime(_) => true,
                        GenericArgument::Type(t) => borrows(t),
                        _ => false,
                    }),
                    _ => false,
                })
        }
        _ => false,
    }
}

/// The owned type a user most likely means: `&str` is `String`, `&[T]` is
/// `Vec<T>`, `&T` is `T`, recursively.
fn owned(ty: &Type) -> Type {
    match ty {
        Type::Reference(r) => match &*r.elem {
            Type::Path(p) if p.path.is_ident("str") => syn::parse_quote!(String),
            Type::Path(p) if p.path.is_ident("Path") => syn::parse_quote!(std::path::PathBuf),
            Type::Slice(s) => {
                let inner = owned(&s.elem);
                syn::parse_quote!(Vec<#inner>)
            }
            other => owned(other),
        },
        Type::Tuple(t) => {
            let mut t = t.clone();
            for e in t.elems.iter_mut() {
                *e = owned(e);
            }
            Type::Tuple(t)
        }
        Type::Array(a) => {
            let mut a = a.clone();
            *a.elem = owned(&a.elem);
            Type::Array(a)
        }
        Type::Paren(p) => owned(&p.elem),
        Type::Group(g) => owned(&g.elem),
        // `impl Iterator<Item = T>` cannot travel; its items can, as a Vec.
        Type::ImplTrait(_) => match crate::generator::iterator_item(ty) {
            Ok(item) => {
                let item = owned(&item);
                syn::parse_quote!(Vec<#item>)
            }
            Err(_) => ty.clone(),
        },
        Type::Path(p) => {
            let mut p = p.clone();
            for seg in p.path.segments.iter_mut() {
                if let PathArguments::AngleBracketed(a) = &mut seg.arguments {
                    a.args = a
                        .args
                        .iter()
                        .filter(|g| !matches!(g, GenericArgument::Lifetime(_)))
                        .map(|g| match g {
                            GenericArgument::Type(t) => GenericArgument::Type(owned(t)),
                            other => other.clone(),
                        })
                        .collect();
                }
            }
            // `Cow<str>` is most often meant as `String`.
            let last = p.path.segments.last().map(|s| s.ident.to_string());
            if last.as_deref() == Some("Cow") {
                if let Some(PathArguments::AngleBracketed(a)) =
                    p.path.segments.last().map(|s| &s.arguments)
                {
                    if let Some(GenericArgument::Type(Type::Path(inner))) = a.args.first() {
                        if inner.path.is_ident("str") {
                            return syn::parse_quote!(String);
                        }
                    }
                }
            }
            Type::Path(p)
        }
        other => other.clone(),
    }
}

/// The error for a method outside a `#[remote] impl` block, or a function
/// whose signature names `Self`.
pub(crate) fn method_outside_impl(span: Span) -> syn::Error {
    syn::Error::new(
        span,
        "a method is remote only inside a `#[remote] impl` block (an actor): put \
         `#[fleet::remote]` on the struct and on its `impl` block instead of on the method",
    )
}

/// Whether the signature mentions `Self` (a method without receiver).
pub(crate) fn mentions_self(sig: &Signature) -> bool {
    fn in_tokens(t: TokenStream2) -> bool {
        t.into_iter().any(|tt| match tt {
            proc_macro2::TokenTree::Ident(i) => i == "Self",
            proc_macro2::TokenTree::Group(g) => in_tokens(g.stream()),
            _ => false,
        })
    }
    let inputs = sig.inputs.to_token_stream();
    let output = match &sig.output {
        ReturnType::Default => TokenStream2::new(),
        ReturnType::Type(_, t) => t.to_token_stream(),
    };
    in_tokens(inputs) || in_tokens(output)
}

/// Items placed next to the function: a marker the generated module finds
/// through `super::*` only when the function is an item of a module.
pub(crate) fn module_level_marker(name: &syn::Ident) -> TokenStream2 {
    let marker = marker_ident(name);
    quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        type #marker = ::fleet::__private::AtModuleLevel;
    }
}

/// A check inside the generated module. Inside a function body the module's
/// `super` is the module around that function, which does not hold the
/// marker, so the name falls back to a type that fails a trait bound whose
/// message says what to do. (A glob import in an inner block shadows an
/// item of the outer block.)
pub(crate) fn module_level_check(name: &syn::Ident) -> TokenStream2 {
    let marker = marker_ident(name);
    let span = name.span();
    let check = quote_spanned! {span=>
        ::fleet::__private::at_module_level::<#marker>()
    };
    quote! {
        const _: () = {
            #[allow(non_camel_case_types, dead_code)]
            type #marker = ::fleet::__private::InsideAFunctionBody;
            {
                #[allow(unused_imports)]
                use super::*;
                #check
            }
        };
    }
}

fn marker_ident(name: &syn::Ident) -> syn::Ident {
    syn::Ident::new(&format!("__fleet_module_level_{name}"), name.span())
}

/// A stand-in for the user's function inside `invoke`, shadowed by the real
/// one (through `super::*`) when that is at module level: inside a function
/// body the real one is out of reach, and the stand-in keeps the only error
/// the one of [`module_level_check`]. Not possible for an `impl Trait`
/// result (the stand-in cannot name a type for it).
pub(crate) fn stand_in(sig: &Signature, arg_types: &[Type]) -> Option<TokenStream2> {
    if let ReturnType::Type(_, t) = &sig.output {
        // `unreachable!()` is no `impl Trait` (nor `Result<impl Trait, E>`).
        if crate::generator::detect(t).is_ok_and(|g| g.is_some()) {
            return None;
        }
    }
    let name = &sig.ident;
    let asyncness = &sig.asyncness;
    let output = &sig.output;
    Some(quote! {
        #[allow(dead_code, unused_variables, clippy::all)]
        #asyncness fn #name(#(_: #arg_types),*) #output {
            ::std::unreachable!()
        }
    })
}

/// `memory = "2GiB"` (or `memory = 2147483648`) in bytes; a unit it does
/// not know is an error naming the units it does.
pub(crate) fn memory_bytes(lit: &syn::Lit) -> syn::Result<u64> {
    const FIX: &str = "write bytes with a unit KiB, MiB, GiB or TiB (memory = \"2GiB\", \
                       memory = \"512MiB\") or a plain number of bytes (memory = 1048576)";
    let text = match lit {
        syn::Lit::Int(i) => return i.base10_parse::<u64>(),
        syn::Lit::Str(s) => s.value(),
        other => {
            return Err(syn::Error::new(
                other.span(),
                format!("memory: expected a string such as \"2GiB\"; {FIX}"),
            ))
        }
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let Ok(number) = number.parse::<f64>() else {
        return Err(syn::Error::new(
            lit.span(),
            format!("memory = \"{text}\" does not start with a number; {FIX}"),
        ));
    };
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(syn::Error::new(
                lit.span(),
                format!("memory = \"{text}\": unknown unit `{other}`; {FIX}"),
            ))
        }
    };
    Ok((number * scale as f64) as u64)
}
