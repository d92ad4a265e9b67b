//! Compiling a schema into a [`Program`]: records inlined, everything that
//! repeats or branches a subroutine, numeric slots numbered; once per
//! schema, off the hot path.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, Name, NamesRef, NamespaceRef, UuidSchema};

use super::{EMPTY_BRANCH, MAX_PROGRAM_OPS, NO_SLOT, NumericKind, Op, Program, SchemaError};

/// Logical types that, when misplaced at the field level, still mark an
/// int/long field as an instant rather than a measurement.
const TIME_LOGICAL_TYPES: [&str; 10] = [
    "date",
    "time-millis",
    "time-micros",
    "timestamp-millis",
    "timestamp-micros",
    "timestamp-nanos",
    "local-timestamp-millis",
    "local-timestamp-micros",
    "local-timestamp-nanos",
    "duration",
];

/// The compiler's output.
pub(super) struct Compiled {
    pub(super) full: Program,
    pub(super) plain: Program,
    pub(super) slots: Vec<NumericKind>,
    pub(super) slot_paths: Vec<String>,
}

/// A subroutine to compile.
struct Job<'s> {
    routine: u32,
    schema: &'s Schema,
    namespace: Option<String>,
    /// Map value: the routine reads the key first.
    map_value: bool,
    /// Named types being inlined where the job was created: a reference to
    /// one of them inside is recursion.
    ancestors: Vec<Name>,
}

/// Schema → program. Records are inlined (so a non-recursive schema is one
/// straight line plus subroutines for arrays, maps and union branches);
/// a reference to a named type being inlined (recursion) becomes a `Call`
/// to that type's own routine, compiled once.
pub(super) struct Compiler<'s> {
    names: &'s NamesRef<'s>,
    /// Routine bodies; jump targets are routine ids until `layout`.
    routines: Vec<Vec<Op>>,
    branches: Vec<u32>,
    named: HashMap<Name, u32>,
    queue: Vec<Job<'s>>,
    /// Named types being inlined on the current path.
    ancestors: Vec<Name>,
    slots: Vec<NumericKind>,
    slot_paths: Vec<String>,
    total_ops: usize,
}

impl<'s> Compiler<'s> {
    pub(super) fn run(root: &'s Schema, names: &'s NamesRef<'s>) -> Result<Compiled, SchemaError> {
        let mut c = Compiler {
            names,
            routines: vec![Vec::new()],
            branches: Vec::new(),
            named: HashMap::new(),
            queue: Vec::new(),
            ancestors: Vec::new(),
            slots: Vec::new(),
            slot_paths: Vec::new(),
            total_ops: 0,
        };
        let mut body = Vec::new();
        c.emit(&mut body, root, None, Some(""))?;
        c.finish(0, body)?;
        while let Some(job) = c.queue.pop() {
            let mut body = Vec::new();
            if job.map_value {
                body.push(Op::String);
            }
            c.ancestors = job.ancestors;
            c.emit(&mut body, job.schema, job.namespace.as_deref(), None)?;
            c.finish(job.routine, body)?;
        }
        Ok(Compiled {
            full: c.layout(false),
            plain: c.layout(true),
            slots: c.slots,
            slot_paths: c.slot_paths,
        })
    }

    fn finish(&mut self, routine: u32, mut body: Vec<Op>) -> Result<(), SchemaError> {
        body.push(Op::Ret);
        self.count(1)?;
        if let Some(r) = self.routines.get_mut(routine as usize) {
            *r = body;
        }
        Ok(())
    }

    fn count(&mut self, n: usize) -> Result<(), SchemaError> {
        self.total_ops += n;
        if self.total_ops > MAX_PROGRAM_OPS {
            return Err(SchemaError::TooLarge);
        }
        Ok(())
    }

    fn new_routine(
        &mut self,
        schema: &'s Schema,
        namespace: NamespaceRef,
        map_value: bool,
    ) -> Result<u32, SchemaError> {
        let id = u32::try_from(self.routines.len()).map_err(|_| SchemaError::TooLarge)?;
        self.count(1)?;
        self.routines.push(Vec::new());
        self.queue.push(Job {
            routine: id,
            schema,
            namespace: namespace.map(str::to_owned),
            map_value,
            ancestors: self.ancestors.clone(),
        });
        Ok(id)
    }

    /// Numeric slot for a value at `path` (None: not on the root's record path).
    fn slot(&mut self, path: Option<&str>, kind: NumericKind) -> u32 {
        match path {
            Some(p) => {
                self.slots.push(kind);
                self.slot_paths.push(p.to_owned());
                (self.slots.len() - 1) as u32
            }
            None => NO_SLOT,
        }
    }

    /// Appends the ops validating one value of `schema` to `out`.
    fn emit(
        &mut self,
        out: &mut Vec<Op>,
        schema: &'s Schema,
        namespace: NamespaceRef,
        path: Option<&str>,
    ) -> Result<(), SchemaError> {
        let op = match schema {
            Schema::Null => return Ok(()),
            Schema::Boolean => Op::Boolean,
            Schema::Int => Op::Int {
                slot: self.slot(path, NumericKind::Int),
            },
            Schema::Long => Op::Long {
                slot: self.slot(path, NumericKind::Long),
            },
            Schema::Float => Op::Float {
                slot: self.slot(path, NumericKind::Float),
            },
            Schema::Double => Op::Double {
                slot: self.slot(path, NumericKind::Double),
            },
            Schema::Date | Schema::TimeMillis => Op::Int { slot: NO_SLOT },
            Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Op::Long { slot: NO_SLOT },
            Schema::Bytes => Op::Bytes,
            Schema::BigDecimal => Op::BigDecimal,
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => Op::Bytes,
                InnerDecimalSchema::Fixed(f) => fixed(f.size),
            },
            Schema::String => Op::String,
            Schema::Uuid(UuidSchema::String) => Op::UuidString,
            Schema::Uuid(UuidSchema::Bytes) => Op::UuidBytes,
            Schema::Uuid(UuidSchema::Fixed(f)) => fixed(f.size),
            Schema::Duration(f) => fixed(f.size),
            Schema::Fixed(f) => fixed(f.size),
            Schema::Enum(e) => Op::Enum(u32::try_from(e.symbols.len()).unwrap_or(u32::MAX)),
            Schema::Array(a) => self.array(&a.items, namespace, false)?,
            Schema::Map(m) => self.array(&m.types, namespace, true)?,
            Schema::Union(u) => {
                let variants = u.variants();
                let table =
                    u32::try_from(self.branches.len()).map_err(|_| SchemaError::TooLarge)?;
                let count = u32::try_from(variants.len()).map_err(|_| SchemaError::TooLarge)?;
                for v in variants {
                    let target = match v {
                        Schema::Null => EMPTY_BRANCH,
                        _ => self.new_routine(v, namespace, false)?,
                    };
                    self.branches.push(target);
                }
                Op::Union { table, count }
            }
            Schema::Record(r) => {
                let name = r.name.fully_qualified_name(namespace).into_owned();
                let inner_ns = name.namespace().map(str::to_owned);
                self.ancestors.push(name);
                for field in &r.fields {
                    let misplaced_time = field
                        .custom_attributes
                        .get("logicalType")
                        .and_then(|v| v.as_str())
                        .is_some_and(|t| TIME_LOGICAL_TYPES.contains(&t));
                    let field_path = match path {
                        Some(_) if misplaced_time => None,
                        Some("") => Some(field.name.clone()),
                        Some(p) => Some(format!("{p}.{}", field.name)),
                        None => None,
                    };
                    self.emit(
                        out,
                        &field.schema,
                        inner_ns.as_deref(),
                        field_path.as_deref(),
                    )?;
                }
                self.ancestors.pop();
                return Ok(());
            }
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(namespace).into_owned();
                if self.ancestors.contains(&name) {
                    Op::Call(self.named_routine(&name)?)
                } else {
                    let target = self.lookup(&name)?;
                    return self.emit(out, target, name.namespace(), path);
                }
            }
        };
        // A zero-size fixed reads nothing: no op, so that every op left
        // reads at least one byte (see the module doc).
        if op == Op::Fixed(0) {
            return Ok(());
        }
        self.count(1)?;
        out.push(op);
        Ok(())
    }

    fn lookup(&self, name: &Name) -> Result<&'s Schema, SchemaError> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| SchemaError::UnknownName(name.fullname(None)))
    }

    /// The routine of a recursive named type, compiled once.
    fn named_routine(&mut self, name: &Name) -> Result<u32, SchemaError> {
        if let Some(&id) = self.named.get(name) {
            return Ok(id);
        }
        let target = self.lookup(name)?;
        // The type's own routine starts a fresh path: the record arm puts
        // the name back on it.
        let saved = std::mem::take(&mut self.ancestors);
        let id = self.new_routine(target, name.namespace(), false);
        self.ancestors = saved;
        let id = id?;
        self.named.insert(name.clone(), id);
        Ok(id)
    }

    fn array(
        &mut self,
        items: &'s Schema,
        namespace: NamespaceRef,
        map: bool,
    ) -> Result<Op, SchemaError> {
        Ok(Op::Array {
            body: self.new_routine(items, namespace, map)?,
        })
    }

    /// Concatenates the routines and turns routine ids into program
    /// counters; `merge` folds runs of fixed-size values into one `Fixed`.
    fn layout(&self, merge: bool) -> Program {
        let routines: Vec<Vec<Op>> = if merge {
            self.routines.iter().map(|r| merge_fixed(r)).collect()
        } else {
            self.routines.clone()
        };
        let mut starts = Vec::with_capacity(routines.len());
        let mut at = 0u32;
        for r in &routines {
            starts.push(at);
            at += r.len() as u32;
        }
        // A routine that only calls another (a union branch or array item
        // naming a recursive type) is that other routine: jumping straight
        // there saves a frame per level of recursion.
        let alias = |mut id: u32| {
            for _ in 0..self.routines.len() {
                match self.routines.get(id as usize).map(Vec::as_slice) {
                    Some([Op::Call(target), Op::Ret]) if *target != id => id = *target,
                    _ => break,
                }
            }
            id
        };
        let start = |id: u32| starts.get(alias(id) as usize).copied().unwrap_or(u32::MAX);
        let empty = |id: u32| {
            self.routines
                .get(id as usize)
                .is_some_and(|r| r.as_slice() == [Op::Ret])
        };
        let mut ops = Vec::with_capacity(at as usize);
        let mut needs_stack = false;
        for r in &routines {
            for &op in r {
                ops.push(match op {
                    Op::Array { body } if empty(body) => Op::ArrayOfEmpty,
                    Op::Array { body } => {
                        needs_stack = true;
                        Op::Array { body: start(body) }
                    }
                    Op::Call(id) => {
                        needs_stack = true;
                        Op::Call(start(id))
                    }
                    op => op,
                });
            }
        }
        let branches = self
            .branches
            .iter()
            .map(|&id| {
                if id == EMPTY_BRANCH || empty(id) {
                    EMPTY_BRANCH
                } else {
                    needs_stack = true;
                    start(id)
                }
            })
            .collect();
        Program {
            ops,
            branches,
            needs_stack,
        }
    }
}

/// `routine` with each run of float/double/fixed ops made one `Fixed` of
/// their total size (a run larger than any datagram saturates, which still
/// fails as `Truncated`).
fn merge_fixed(routine: &[Op]) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(routine.len());
    for &op in routine {
        let size = match op {
            Op::Float { .. } => 4,
            Op::Double { .. } => 8,
            Op::Fixed(n) => n,
            op => {
                out.push(op);
                continue;
            }
        };
        match out.last_mut() {
            Some(Op::Fixed(run)) => *run = run.saturating_add(size),
            _ => out.push(Op::Fixed(size)),
        }
    }
    out
}

fn fixed(size: usize) -> Op {
    Op::Fixed(u32::try_from(size).unwrap_or(u32::MAX))
}
