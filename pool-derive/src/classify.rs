//! `#[derive(Classify)]`: reading the `#[classify(...)]` attributes and writing the impl.
//!
//! Every mistake is reported at the attribute (or option) that holds it, with a
//! message that says what to write instead; all mistakes of one derive are reported
//! together.

use std::collections::HashSet;

use proc_macro2::{Ident, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Fields, LitStr, Member, Meta, Token, Type, WherePredicate,
    parse_quote,
};

/// The `ResetCause` label values and the variant each one names. Must list every
/// variant of `steadypool::ResetCause` (the derive's tests check each one).
const CAUSES: [(&str, &str); 10] = [
    ("refused", "Refused"),
    ("connect_timeout", "ConnectTimeout"),
    ("peer_reset", "PeerReset"),
    ("peer_closed", "PeerClosed"),
    ("broken_pipe", "BrokenPipe"),
    ("keepalive_timeout", "KeepaliveTimeout"),
    ("user_timeout", "UserTimeout"),
    ("unexpected_data", "UnexpectedData"),
    ("ping_failed", "PingFailed"),
    ("other", "Other"),
];

const FORMS: &str = "`transport`, `transient`, `broken = \"<cause>\"`, `delegate` or `application` \
     (`sent = \"no\"` may follow `broken` or `transport`, `sent = \"maybe\"` may follow `transient`)";

/// What one variant means.
enum Rule {
    Application,
    Transient { sent_maybe: bool },
    Broken { cause: Ident, sent_no: bool },
    Transport { sent_no: bool },
    Delegate,
}

/// One variant (or the struct itself) to classify.
struct Case<'a> {
    /// `Self::Variant` or `Self`.
    path: TokenStream,
    fields: &'a Fields,
    attrs: &'a [Attribute],
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let cases: Vec<Case<'_>> = match &input.data {
        Data::Enum(data) => {
            for attr in classify_attrs(&input.attrs) {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "put `#[classify(...)]` on the variants, not on the enum: each variant says what it means",
                ));
            }
            data.variants
                .iter()
                .map(|variant| {
                    let ident = &variant.ident;
                    Case {
                        path: quote!(Self::#ident),
                        fields: &variant.fields,
                        attrs: &variant.attrs,
                    }
                })
                .collect()
        }
        Data::Struct(data) => vec![Case {
            path: quote!(Self),
            fields: &data.fields,
            attrs: &input.attrs,
        }],
        Data::Union(data) => {
            return Err(syn::Error::new_spanned(
                data.union_token,
                "derive(Classify) works on enums and structs; implement `steadypool::Classify` by hand for a union",
            ));
        }
    };

    let params: HashSet<Ident> = input
        .generics
        .type_params()
        .map(|param| param.ident.clone())
        .collect();
    let mut bounds: Vec<WherePredicate> = Vec::new();
    let mut arms = Vec::with_capacity(cases.len());
    let mut permanence = Vec::with_capacity(cases.len());
    let mut delegated_sent = Vec::new();
    for case in &cases {
        for field in case.fields {
            for attr in classify_attrs(&field.attrs) {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "`#[classify(...)]` goes on the variant, not on a field; to choose the field that \
                     `transport` or `delegate` inspects, mark it `#[source]`",
                ));
            }
        }
        match arm(case, &params, &mut bounds) {
            Ok(Arms {
                classify,
                permanent,
                transient_sent,
            }) => {
                arms.push(classify);
                permanence.push(permanent);
                delegated_sent.extend(transient_sent);
            }
            Err(err) => errors.push(err),
        }
    }
    errors.finish()?;

    let ident = &input.ident;
    let mut generics = input.generics.clone();
    generics.make_where_clause().predicates.extend(bounds);
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let (body, permanent) = if arms.is_empty() {
        (quote!(match *self {}), quote!(match *self {}))
    } else {
        (
            quote!(match self { #(#arms)* }),
            quote!(match self { #(#permanence)* }),
        )
    };
    // Only a delegate has more to say than the trait's default.
    let transient_sent = (!delegated_sent.is_empty()).then(|| {
        quote! {
            fn transient_sent(&self) -> ::steadypool::Sent {
                #[allow(unreachable_patterns)]
                match self {
                    #(#delegated_sent)*
                    _ => ::steadypool::Sent::No,
                }
            }
        }
    });
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::steadypool::Classify for #ident #ty_generics #where_clause {
            fn classify(&self) -> ::steadypool::Disposition {
                #body
            }

            fn is_permanent(&self) -> bool {
                #permanent
            }

            #transient_sent
        }
    })
}

fn classify_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|attr| attr.path().is_ident("classify"))
}

/// The match arms for one case.
struct Arms {
    /// What it classifies as.
    classify: TokenStream,
    /// Whether it is permanent: what the wrapped error says, for `transport` and
    /// `delegate`; never, otherwise.
    permanent: TokenStream,
    /// Whether a transient failure may have run: asked of the wrapped error, for a
    /// `delegate`; `None` for the default (no).
    transient_sent: Option<TokenStream>,
}

fn arm(
    case: &Case<'_>,
    params: &HashSet<Ident>,
    bounds: &mut Vec<WherePredicate>,
) -> syn::Result<Arms> {
    let path = &case.path;
    let mut found = classify_attrs(case.attrs);
    let first = found.next();
    if let Some(second) = found.next() {
        return Err(syn::Error::new_spanned(
            second,
            "only one `#[classify(...)]` per variant: merge them into one, \
             e.g. `#[classify(broken = \"peer_reset\", sent = \"no\")]`",
        ));
    }
    let (rule, attr) = match first {
        None => (Rule::Application, None),
        Some(attr) => (parse_rule(attr)?, Some(attr)),
    };
    let disposition = quote!(::steadypool::Disposition);
    let never = quote!(#path { .. } => false,);
    let simple = |classify: TokenStream| Arms {
        classify,
        permanent: never.clone(),
        transient_sent: None,
    };
    Ok(match rule {
        Rule::Application => simple(quote!(#path { .. } => #disposition::Application,)),
        Rule::Transient { sent_maybe } => Arms {
            transient_sent: sent_maybe.then(|| quote!(#path { .. } => ::steadypool::Sent::Maybe,)),
            ..simple(quote!(#path { .. } => #disposition::Transient,))
        },
        Rule::Broken { cause, sent_no } => {
            let sent = sent_tokens(sent_no);
            let arm = quote!(#path { .. } => #disposition::Broken {
                cause: ::steadypool::ResetCause::#cause,
                sent: #sent,
            },);
            simple(arm)
        }
        Rule::Transport { sent_no } => {
            let (member, ty) = pick_field(case.fields, attr, "transport", "a transport error")?;
            if mentions_any(ty, params) {
                bounds.push(parse_quote!(#ty: ::std::error::Error + 'static));
            }
            let sent = sent_tokens(sent_no);
            let override_sent = sent_no.then(|| {
                quote!(::core::option::Option::Some(#disposition::Broken { cause, .. }) => {
                    #disposition::Broken { cause, sent: #sent }
                })
            });
            let arm = quote!(#path { #member: __classify_field, .. } => {
                match ::steadypool::classify_source_chain(__classify_field) {
                    #override_sent
                    ::core::option::Option::Some(found) => found,
                    ::core::option::Option::None => #disposition::Broken {
                        cause: ::steadypool::ResetCause::Other,
                        sent: #sent,
                    },
                }
            });
            let permanent = quote!(#path { #member: __classify_field, .. } => {
                ::steadypool::permanent_in_source_chain(__classify_field)
            });
            Arms {
                classify: arm,
                permanent,
                transient_sent: None,
            }
        }
        Rule::Delegate => {
            let (member, ty) = pick_field(
                case.fields,
                attr,
                "delegate",
                "an error that implements Classify",
            )?;
            if mentions_any(ty, params) {
                bounds.push(parse_quote!(#ty: ::steadypool::Classify));
            }
            // A method call, so a boxed error (`Box<steadypool::Error<E>>`) is reached
            // through auto-deref.
            let arm = quote!(#path { #member: __classify_field, .. } => {
                use ::steadypool::Classify as _;
                __classify_field.classify()
            });
            let permanent = quote!(#path { #member: __classify_field, .. } => {
                use ::steadypool::Classify as _;
                __classify_field.is_permanent()
            });
            let transient_sent = quote!(#path { #member: __classify_field, .. } => {
                use ::steadypool::Classify as _;
                __classify_field.transient_sent()
            });
            Arms {
                classify: arm,
                permanent,
                transient_sent: Some(transient_sent),
            }
        }
    })
}

fn sent_tokens(sent_no: bool) -> TokenStream {
    if sent_no {
        quote!(::steadypool::Sent::No)
    } else {
        quote!(::steadypool::Sent::Maybe)
    }
}

/// Reads one `#[classify(...)]`.
fn parse_rule(attr: &Attribute) -> syn::Result<Rule> {
    let list = match &attr.meta {
        Meta::List(list) => list,
        Meta::Path(_) | Meta::NameValue(_) => {
            return Err(syn::Error::new_spanned(
                attr,
                format!("write `#[classify(<what>)]` with one of {FORMS}"),
            ));
        }
    };
    let mut kinds: Vec<(&'static str, proc_macro2::Span)> = Vec::new();
    let mut cause: Option<Ident> = None;
    let mut sent: Option<(bool, proc_macro2::Span)> = None;
    list.parse_nested_meta(|meta| {
        let key = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        let span = meta.path.span();
        let takes_no_value = |name: &str| -> syn::Result<()> {
            if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                Err(meta.error(format!("`{name}` takes no value: write just `{name}`")))
            } else {
                Ok(())
            }
        };
        match key.as_str() {
            "transport" => {
                takes_no_value("transport")?;
                kinds.push(("transport", span));
            }
            "transient" => {
                takes_no_value("transient")?;
                kinds.push(("transient", span));
            }
            "delegate" => {
                takes_no_value("delegate")?;
                kinds.push(("delegate", span));
            }
            "application" => {
                takes_no_value("application")?;
                kinds.push(("application", span));
            }
            "broken" => {
                if !meta.input.peek(Token![=]) {
                    return Err(meta.error(
                        "`broken` needs the cause: write `broken = \"<cause>\"`, e.g. `broken = \"peer_reset\"`",
                    ));
                }
                let name: LitStr = meta.value()?.parse()?;
                cause = Some(cause_variant(&name)?);
                kinds.push(("broken", span));
            }
            "sent" => {
                if !meta.input.peek(Token![=]) {
                    return Err(meta.error("write `sent = \"no\"` or `sent = \"maybe\"`"));
                }
                let value: LitStr = meta.value()?.parse()?;
                let sent_no = match value.value().as_str() {
                    "no" => true,
                    "maybe" => false,
                    other => {
                        return Err(syn::Error::new_spanned(
                            &value,
                            format!(
                                "unknown `sent` value \"{other}\": write `sent = \"no\"` (the request provably \
                                 never left the client, or never ran) or `sent = \"maybe\"` (it may have)"
                            ),
                        ));
                    }
                };
                if sent.is_some() {
                    return Err(meta.error("`sent` is given twice: keep one"));
                }
                sent = Some((sent_no, span));
            }
            _ => {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "unknown classify option `{}`: expected {FORMS}",
                        meta.path.to_token_stream()
                    ),
                ));
            }
        }
        Ok(())
    })?;

    let (kind, kind_span) = match kinds.as_slice() {
        [] => {
            let message = if sent.is_some() {
                "`sent` only applies together with `broken = \"<cause>\"`, `transport` or `transient`, \
                 e.g. `#[classify(broken = \"peer_closed\", sent = \"no\")]`"
                    .to_owned()
            } else {
                format!("say what this variant means: {FORMS}")
            };
            return Err(syn::Error::new_spanned(attr, message));
        }
        [one] => *one,
        [(first, _), (second, span), ..] => {
            return Err(syn::Error::new(
                *span,
                format!(
                    "`{first}` and `{second}` cannot be combined: a variant means one thing, keep one"
                ),
            ));
        }
    };
    let sent_no = match (sent, kind) {
        (None, "transient") => true,
        (None, _) => false,
        (Some((sent_no, _)), "broken" | "transport" | "transient") => sent_no,
        (Some((_, span)), other) => {
            return Err(syn::Error::new(
                span,
                format!(
                    "`sent` only applies to `broken = \"<cause>\"`, `transport` or `transient`: \
                     remove it from `{other}`, whose answer does not depend on it"
                ),
            ));
        }
    };
    Ok(match kind {
        "transport" => Rule::Transport { sent_no },
        "transient" => Rule::Transient {
            sent_maybe: !sent_no,
        },
        "delegate" => Rule::Delegate,
        "application" => Rule::Application,
        _ => match cause {
            Some(cause) => Rule::Broken { cause, sent_no },
            None => {
                return Err(syn::Error::new(
                    kind_span,
                    "`broken` needs the cause: write `broken = \"<cause>\"`",
                ));
            }
        },
    })
}

/// The `ResetCause` variant a label names, or an error listing the labels.
fn cause_variant(name: &LitStr) -> syn::Result<Ident> {
    let value = name.value();
    if let Some((_, variant)) = CAUSES.iter().find(|(label, _)| *label == value) {
        return Ok(Ident::new(variant, name.span()));
    }
    let labels: Vec<String> = CAUSES
        .iter()
        .map(|(label, _)| format!("\"{label}\""))
        .collect();
    let hint = closest_cause(&value)
        .map(|label| format!("did you mean \"{label}\"? "))
        .unwrap_or_default();
    Err(syn::Error::new_spanned(
        name,
        format!(
            "unknown cause \"{value}\": {hint}expected one of {}",
            labels.join(", ")
        ),
    ))
}

fn closest_cause(value: &str) -> Option<&'static str> {
    let value = value.to_ascii_lowercase().replace(['-', ' '], "_");
    if value.is_empty() {
        return None;
    }
    CAUSES
        .iter()
        .map(|(label, _)| *label)
        .map(|label| {
            let distance = if label.contains(value.as_str()) || value.contains(label) {
                0
            } else {
                edit_distance(label, &value)
            };
            (distance, label)
        })
        .filter(|(distance, _)| *distance <= 3)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, label)| label)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The field `transport` or `delegate` inspects: the only one, the one marked
/// `#[source]` / `#[from]`, or the one named `source`.
fn pick_field<'a>(
    fields: &'a Fields,
    attr: Option<&Attribute>,
    option: &str,
    holds: &str,
) -> syn::Result<(Member, &'a Type)> {
    let members = || {
        fields.iter().enumerate().map(|(index, field)| {
            let member = match &field.ident {
                Some(ident) => Member::Named(ident.clone()),
                None => Member::Unnamed(index.into()),
            };
            (member, field)
        })
    };
    let error = |message: String| match attr {
        Some(attr) => syn::Error::new_spanned(attr, message),
        None => syn::Error::new(proc_macro2::Span::call_site(), message),
    };
    match fields.len() {
        0 => {
            return Err(error(format!(
                "`{option}` needs a field holding {holds}, and this has none; for a variant that \
                 means a broken connection write `#[classify(broken = \"peer_closed\")]` (or another cause)"
            )));
        }
        1 => {
            if let Some((member, field)) = members().next() {
                return Ok((member, &field.ty));
            }
        }
        _ => {}
    }
    let marked: Vec<_> = members()
        .filter(|(_, field)| {
            field
                .attrs
                .iter()
                .any(|a| a.path().is_ident("source") || a.path().is_ident("from"))
        })
        .collect();
    if let [(member, field)] = marked.as_slice() {
        return Ok((member.clone(), &field.ty));
    }
    if let Some((member, field)) =
        members().find(|(_, field)| field.ident.as_ref().is_some_and(|i| i == "source"))
    {
        return Ok((member, &field.ty));
    }
    Err(error(format!(
        "`{option}` cannot tell which field holds {holds}: mark that field `#[source]`, \
         name it `source`, or give the variant a single field"
    )))
}

/// Whether a type mentions one of the generic type parameters (and so needs a bound).
fn mentions_any(ty: &Type, params: &HashSet<Ident>) -> bool {
    fn walk(tokens: TokenStream, params: &HashSet<Ident>) -> bool {
        tokens.into_iter().any(|tree| match tree {
            TokenTree::Ident(ident) => params.contains(&ident),
            TokenTree::Group(group) => walk(group.stream(), params),
            TokenTree::Punct(_) | TokenTree::Literal(_) => false,
        })
    }
    !params.is_empty() && walk(ty.to_token_stream(), params)
}

/// Collects every error of one derive, so all are reported at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}
