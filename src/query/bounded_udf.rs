//! String functions whose output size the caller chooses (`repeat`,
//! `lpad`, `rpad`), bounded by `query.max_result_bytes` before they run.
//!
//! Their output is allocated outside the query memory pool, and a single
//! call runs on the async runtime without yielding, so neither the pool nor
//! the query timeout can stop `repeat('x', 2000000000)`. Each is wrapped:
//! the wrapper works out the largest output the call can produce from its
//! arguments and refuses it before any byte is allocated. The constant
//! folder calls the same wrapper, so a literal call fails at planning.

use std::any::Any;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::prelude::SessionContext;

/// The functions wrapped, and how many output bytes one row may take per
/// unit of the count argument (`lpad`/`rpad` count characters, up to 4
/// bytes each; `repeat` repeats its whole string).
const BOUNDED: &[&str] = &["repeat", "lpad", "rpad"];

/// Words every refusal carries, by which the engine tells it from other errors.
pub const REFUSAL: &str = "more than query.max_result_bytes";

/// A wrapped function: the same name, signature and result, with a size check.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    max_bytes: usize,
}

/// Replaces `repeat`, `lpad` and `rpad` in `ctx` with bounded ones.
pub fn register(ctx: &SessionContext, max_bytes: usize) {
    let state = ctx.state();
    let functions = state.scalar_functions();
    for name in BOUNDED {
        if let Some(inner) = functions.get(*name) {
            let bounded = Bounded {
                inner: inner.clone(),
                max_bytes,
            };
            ctx.register_udf(ScalarUDF::new_from_impl(bounded));
        }
    }
}

/// The largest value of an integer argument, over every row.
fn max_count(arg: &ColumnarValue) -> Option<i64> {
    match arg {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(v) => v,
            _ => None,
        },
        ColumnarValue::Array(a) => {
            let a = datafusion::arrow::compute::cast(a, &DataType::Int64).ok()?;
            datafusion::arrow::compute::max(a.as_primitive::<Int64Type>())
        }
    }
}

/// The longest string of a string argument, in bytes.
fn max_len(arg: &ColumnarValue) -> usize {
    let text = |s: &ScalarValue| s.to_string().len();
    match arg {
        ColumnarValue::Scalar(s) => text(s),
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Utf8 => a
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::len)
                .max()
                .unwrap_or(0),
            DataType::LargeUtf8 => a
                .as_string::<i64>()
                .iter()
                .flatten()
                .map(str::len)
                .max()
                .unwrap_or(0),
            DataType::Utf8View => a
                .as_string_view()
                .iter()
                .flatten()
                .map(str::len)
                .max()
                .unwrap_or(0),
            _ => a.get_array_memory_size(),
        },
    }
}

impl Bounded {
    /// The most bytes this call can produce.
    fn bound(&self, args: &ScalarFunctionArgs) -> u128 {
        let rows = args.number_rows.max(1) as u128;
        let count = args.args.get(1).and_then(max_count).unwrap_or(0).max(0) as u128;
        let per_row = match self.inner.name() {
            "repeat" => args.args.first().map_or(0, max_len) as u128 * count,
            _ => count * 4,
        };
        per_row * rows
    }
}

impl ScalarUDFImpl for Bounded {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bound = self.bound(&args);
        if bound > self.max_bytes as u128 {
            return exec_err!(
                "{}() would build up to {bound} bytes, {REFUSAL} ({} bytes)",
                self.inner.name(),
                self.max_bytes
            );
        }
        self.inner.invoke_with_args(args)
    }
}
