//! The request envelope shared by every body format: strict UTF-8, the `{"messages": [...]}`
//! walk with its whole-body checks, and field values classified without conversion. The
//! per-format rules live in `parse.rs` (telemetry) and `shelly.rs`.

use std::borrow::Cow;

use crate::errors::BodyError;
use crate::json::{self, Invalid, Literal, Number, Reader, Str};

/// A field's value, classified but not converted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Value<'a> {
    #[default]
    Missing,
    Null,
    Str(Str<'a>),
    /// A number token as sent.
    Number(Number<'a>),
    Bool(bool),
    Array,
    Object,
}

impl<'a> Value<'a> {
    /// Reads the value at the cursor, validating it.
    #[inline(always)]
    pub fn read(r: &mut Reader<'a>) -> json::Result<Self> {
        let mut v = Value::Missing;
        v.read_over(r)?;
        Ok(v)
    }

    /// `read` into `self`: each kind of value is stored where it is read, not gathered from
    /// all of them first (a field stored by index then costs a copy through the stack).
    #[inline(always)]
    pub fn read_over(&mut self, r: &mut Reader<'a>) -> json::Result<()> {
        match r.peek().ok_or(Invalid)? {
            b'"' => *self = Value::Str(r.string_at_quote()?),
            b't' | b'f' | b'n' => {
                *self = match r.literal()? {
                    Literal::True => Value::Bool(true),
                    Literal::False => Value::Bool(false),
                    Literal::Null => Value::Null,
                }
            }
            b'[' => {
                r.skip_value()?;
                *self = Value::Array;
            }
            b'{' => {
                r.skip_value()?;
                *self = Value::Object;
            }
            _ => *self = Value::Number(r.number()?),
        }
        Ok(())
    }

    /// As a string field. A string with escapes (rare) is decoded into `unescaped`, which the
    /// text then borrows: a text is a slice, with nothing of its own to drop.
    #[inline]
    pub fn text<'s>(&self, unescaped: &'s mut String) -> Text<'s>
    where
        'a: 's,
    {
        match self {
            Value::Str(s) => match s.decode() {
                Some(Cow::Borrowed(text)) => Text::Valid(text),
                Some(Cow::Owned(text)) => {
                    *unescaped = text;
                    Text::Valid(unescaped)
                }
                None => Text::LoneSurrogate,
            },
            _ => Text::NotString,
        }
    }
}

/// A value read as a string field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text<'a> {
    NotString,
    /// A string holding a lone surrogate escape: a string, but never a valid value.
    LoneSurrogate,
    Valid(&'a str),
}

impl<'a> Text<'a> {
    pub fn get(&self) -> Option<&'a str> {
        match self {
            Text::Valid(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_string(&self) -> bool {
        !matches!(self, Text::NotString)
    }
}

/// The body as text: strict UTF-8, or not JSON at all.
pub fn utf8(body: &[u8]) -> Result<&str, BodyError> {
    simdutf8::basic::from_utf8(body).map_err(|_| BodyError::NotJson)
}

/// Reads the elements of a `{"messages": [...]}` body for `walk_messages`.
pub trait Elements<'a> {
    /// A `messages` list starts; a later duplicate key replaces an earlier list.
    fn reset(&mut self);

    /// Reads the element at the cursor, consuming exactly that value.
    fn element(&mut self, r: &mut Reader<'a>) -> json::Result<()>;
}

/// Walks a `{"messages": [...]}` body, handing the first `max` elements to `elements`, and
/// returns the element count after all whole-body checks.
pub fn walk_messages<'a>(
    text: &'a str,
    max: usize,
    elements: &mut impl Elements<'a>,
) -> Result<usize, BodyError> {
    let mut r = Reader::new(text);
    let count = walk(&mut r, max, elements).map_err(|_| BodyError::NotJson)?;
    match count {
        None => Err(BodyError::NoMessagesList),
        Some(0) => Err(BodyError::Empty),
        Some(count) if count > max => Err(BodyError::TooMany { count, max }),
        Some(count) => Ok(count),
    }
}

fn walk<'a>(
    r: &mut Reader<'a>,
    max: usize,
    elements: &mut impl Elements<'a>,
) -> json::Result<Option<usize>> {
    if r.peek() != Some(b'{') {
        r.skip_value()?;
        r.end()?;
        return Ok(None);
    }
    r.begin_object()?;
    let mut count = None;
    let mut first = true;
    while let Some(key) = r.next_key(first)? {
        first = false;
        if !key.is("messages") {
            r.skip_value()?;
        } else if r.peek() != Some(b'[') {
            r.skip_value()?;
            count = None;
        } else {
            elements.reset();
            r.begin_array()?;
            let mut n = 0;
            while r.next_element(n == 0)? {
                n += 1;
                if n <= max {
                    elements.element(r)?;
                } else {
                    r.skip_value()?;
                }
            }
            count = Some(n);
        }
    }
    r.end()?;
    Ok(count)
}
