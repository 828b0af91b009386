"""Small workspaces for the context engine's tests: a dict of files written under a folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SAMPLES = {  # one small file per language the repo map supports, with the symbols it must find
    "py/shapes.py": ('''import math


class Circle(Shape):
    radius: float

    @property
    def area(self) -> float:
        def helper():
            return 1
        return math.pi * self.radius ** 2


def make_circle(r: float) -> Circle:
    return Circle(r)
''', {("Circle", "class"), ("area", "method"), ("make_circle", "function")}),
    "js/cart.js": ('''const total = (items) => items.reduce((a, b) => a + b, 0);
function addItem(cart, item) { cart.push(item); }
class Cart {
  checkout() { return total(this.items); }
}
module.exports = { Cart };
''', {("total", "function"), ("addItem", "function"), ("Cart", "class"), ("checkout", "method")}),
    "ts/user.ts": ('''export interface UserRecord { id: number; name: string }
export type UserId = number;
export enum Role { Admin, Guest }
export class UserStore {
  save(user: UserRecord): void {}
}
export function loadUser(id: UserId): UserRecord { return { id, name: "" }; }
''', {("UserRecord", "interface"), ("UserId", "type"), ("Role", "enum"), ("UserStore", "class"),
      ("save", "method"), ("loadUser", "function")}),
    "ts/App.tsx": ('''export const App = () => <div>hello</div>;
export function Header(props: { title: string }) { return <h1>{props.title}</h1>; }
''', {("App", "function"), ("Header", "function")}),
    "go/store.go": ('''package store

type Store struct { items map[string]int }
type Getter interface { Get(key string) int }
type Key string

func New() *Store { return &Store{} }
func (s *Store) Get(key string) int { return s.items[key] }
''', {("Store", "struct"), ("Getter", "interface"), ("Key", "type"), ("New", "function"), ("Get", "method")}),
    "rs/lib.rs": ('''pub struct Point { x: i32 }
pub enum Dir { Up, Down }
pub trait Shape { fn area(&self) -> f64; }
impl Shape for Point { fn area(&self) -> f64 { 0.0 } }
pub fn origin() -> Point { Point { x: 0 } }
''', {("Point", "struct"), ("Dir", "enum"), ("Shape", "trait"), ("Point", "impl"), ("area", "method"),
      ("origin", "function")}),
    "java/Account.java": ('''package bank;

public class Account {
    public Account() {}
    public int balance() { return 0; }
    interface Listener { void changed(); }
}
''', {("Account", "class"), ("Account", "method"), ("balance", "method"), ("Listener", "interface"),
      ("changed", "method")}),
}


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write ``files`` (path -> text or bytes) under ``root``; returns ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def git_init(root: Path, commit: bool = True) -> None:
    """Make ``root`` a git work tree (with everything committed unless ``commit`` is False)."""
    run = lambda *args: subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    if commit:
        run("add", "-A")
        run("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init")


def has_git() -> bool:
    return shutil.which("git") is not None
