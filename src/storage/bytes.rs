//! Little-endian byte reading shared by the binary formats (the log's records,
//! the snapshot files): a cursor that answers "cut short" instead of panicking
//! when the bytes end before a field.

/// The bytes ended before the field being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cut short")]
pub struct CutShort;

/// A cursor over a byte slice.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, at: 0 }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CutShort> {
        let s = self.bytes.get(self.at..self.at.saturating_add(n)).ok_or(CutShort)?;
        self.at += n;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CutShort> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, CutShort> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, CutShort> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, CutShort> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, CutShort> {
        self.array().map(u64::from_le_bytes)
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at.min(self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_in_order_and_a_short_read_is_an_error() {
        let bytes = [1u8, 2, 0, 3, 0, 0, 0, 9];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.u8(), Ok(1));
        assert_eq!(c.u16(), Ok(2));
        assert_eq!(c.u32(), Ok(3));
        assert_eq!(c.remaining(), 1);
        assert_eq!(c.u16(), Err(CutShort));
        assert_eq!(c.take(usize::MAX), Err(CutShort));
        assert_eq!(c.u8(), Ok(9));
    }
}
